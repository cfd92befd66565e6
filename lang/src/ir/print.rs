//! The IR's textual form, for golden tests and `nabla ir`:
//!
//! ```text
//! graph train {
//!   %0 = input "x" data : f32[2, 784]
//!   %1 = input "w" param : f32[10, 784]
//!   %2 = transpose{perm=[1, 0]} %1 : f32[784, 10]
//!   %3 = matmul %0, %2 : f32[2, 10]
//!   out "logits" = %3
//! }
//! ```
//!
//! [`print_graph`] and [`parse_graph`] are inverses: `parse_graph(print_graph(g)) == g`.

use std::fmt::Write as _;

use super::*;

fn attrs(op: &Op) -> String {
    let w = |w: &Window| {
        format!(
            "{{k={}, stride={}, pad={}, dilation={}, groups={}}}",
            w.kernel, w.stride, w.pad, w.dilation, w.groups
        )
    };
    match op {
        Op::Input { name, kind } => format!(" {name:?} {}", kind_name(*kind)),
        Op::Const(c) => format!(" {c:?}"),
        Op::Reduce { axes, keepdim, .. } => format!("{{axes={axes:?}, keepdim={keepdim}}}"),
        Op::ArgMax { axis } => format!("{{axis={axis}}}"),
        Op::Transpose { perm } => format!("{{perm={perm:?}}}"),
        Op::Slice { axis, start, end } => format!("{{axis={axis}, start={start}, end={end}}}"),
        Op::Pad {
            axis,
            before,
            after,
        } => format!("{{axis={axis}, before={before}, after={after}}}"),
        Op::Concat { axis } => format!("{{axis={axis}}}"),
        Op::OneHot { classes } => format!("{{classes={classes}}}"),
        Op::RandomUniform { seed } => format!("{{seed={seed}}}"),
        Op::Conv2d(x)
        | Op::Conv2dInputGrad(x)
        | Op::Conv2dWeightGrad(x)
        | Op::MaxPool2d(x)
        | Op::MaxPool2dGrad(x)
        | Op::AvgPool2d(x)
        | Op::AvgPool2dGrad(x) => w(x),
        _ => String::new(),
    }
}

fn kind_name(k: InputKind) -> &'static str {
    match k {
        InputKind::Data => "data",
        InputKind::Label => "label",
        InputKind::Param => "param",
        InputKind::State => "state",
        InputKind::Cotangent => "cotangent",
    }
}

pub fn print_graph(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "graph {} {{",
        if g.mode == Mode::Train {
            "train"
        } else {
            "eval"
        }
    );
    for (i, n) in g.nodes.iter().enumerate() {
        let args: Vec<String> = n.args.iter().map(|a| a.to_string()).collect();
        let sep = if args.is_empty() { "" } else { " " };
        let dims: Vec<String> = n.shape.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            s,
            "  %{i} = {}{}{sep}{} : {}[{}]",
            n.op.name(),
            attrs(&n.op),
            args.join(", "),
            n.dtype.name(),
            dims.join(", ")
        );
    }
    for (name, v) in &g.outputs {
        let _ = writeln!(s, "  out {name:?} = {v}");
    }
    s.push_str("}\n");
    s
}

/// Parses the textual form. Errors name the line.
pub fn parse_graph(text: &str) -> Result<Graph, String> {
    let mut g = Graph::default();
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate();
    match lines.next() {
        Some((_, "graph train {")) => g.mode = Mode::Train,
        Some((_, "graph eval {")) => g.mode = Mode::Eval,
        other => {
            return Err(format!(
                "line 1: expected `graph train {{` or `graph eval {{`, found {other:?}"
            ));
        }
    }
    for (i, line) in lines {
        let at = |m: &str| format!("line {}: {m}: {line}", i + 1);
        if line == "}" {
            return Ok(g);
        }
        if let Some(rest) = line.strip_prefix("out ") {
            let (name, v) = rest
                .split_once(" = ")
                .ok_or_else(|| at("expected `out \"name\" = %n`"))?;
            g.outputs.push((
                unquote(name).ok_or_else(|| at("bad output name"))?,
                value(v).ok_or_else(|| at("bad value"))?,
            ));
            continue;
        }
        let (lhs, rhs) = line
            .split_once(" = ")
            .ok_or_else(|| at("expected `%n = op ...`"))?;
        if value(lhs) != Some(ValueId(g.nodes.len() as u32)) {
            return Err(at("nodes must be numbered in order"));
        }
        let (body, ty) = rhs
            .rsplit_once(" : ")
            .ok_or_else(|| at("missing ` : type`"))?;
        let (dtype, shape) = parse_type(ty).ok_or_else(|| at("bad type"))?;
        let name_end = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let (name, rest) = body.split_at(name_end);
        let (attr, args) = if let Some(r) = rest.strip_prefix('{') {
            let close = r.find('}').ok_or_else(|| at("unclosed attributes"))?;
            (Some(&r[..close]), r[close + 1..].trim())
        } else {
            (None, rest.trim())
        };
        let (op, args) = parse_op(name, attr, args).ok_or_else(|| at("bad op"))?;
        g.nodes.push(Node {
            op,
            args,
            dtype,
            shape,
            span: None,
        });
    }
    Err("missing closing `}`".into())
}

fn unquote(s: &str) -> Option<String> {
    serde_json::from_str::<String>(s.trim()).ok()
}

fn value(s: &str) -> Option<ValueId> {
    s.trim().strip_prefix('%')?.parse().ok().map(ValueId)
}

fn parse_type(s: &str) -> Option<(DType, Vec<usize>)> {
    let (dt, rest) = s.trim().split_once('[')?;
    let dims = rest.strip_suffix(']')?;
    let shape = if dims.trim().is_empty() {
        vec![]
    } else {
        dims.split(',')
            .map(|d| d.trim().parse().ok())
            .collect::<Option<Vec<_>>>()?
    };
    Some((DType::parse(dt)?, shape))
}

fn kv(attr: Option<&str>) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let Some(a) = attr else { return out };
    // Split on commas outside brackets.
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in a.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&a[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&a[start..]);
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

fn list(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(vec![]);
    }
    inner.split(',').map(|x| x.trim().parse().ok()).collect()
}

fn parse_op(name: &str, attr: Option<&str>, rest: &str) -> Option<(Op, Vec<ValueId>)> {
    let a = kv(attr);
    let num = |k: &str| a.get(k).and_then(|v| v.parse::<usize>().ok());
    let window = || {
        Some(Window {
            kernel: num("k")?,
            stride: num("stride")?,
            pad: num("pad")?,
            dilation: num("dilation")?,
            groups: num("groups")?,
        })
    };
    if name == "input" {
        let (q, kind) = rest.rsplit_once(' ')?;
        let kind = match kind {
            "data" => InputKind::Data,
            "label" => InputKind::Label,
            "param" => InputKind::Param,
            "state" => InputKind::State,
            "cotangent" => InputKind::Cotangent,
            _ => return None,
        };
        return Some((
            Op::Input {
                name: unquote(q)?,
                kind,
            },
            vec![],
        ));
    }
    if name == "const" {
        return Some((Op::Const(rest.trim().parse().ok()?), vec![]));
    }
    let args: Vec<ValueId> = if rest.is_empty() {
        vec![]
    } else {
        rest.split(',').map(value).collect::<Option<_>>()?
    };
    if let Some(u) = Unary::from_name(name) {
        return Some((Op::Unary(u), args));
    }
    if let Some(b) = Binary::from_name(name) {
        return Some((Op::Binary(b), args));
    }
    if let Some(c) = Compare::ALL.into_iter().find(|c| c.name() == name) {
        return Some((Op::Compare(c), args));
    }
    let op = match name {
        "select" => Some(Op::Select),
        "sum" | "max" => Some(Op::Reduce {
            op: if name == "sum" {
                Reduce::Sum
            } else {
                Reduce::Max
            },
            axes: list(a.get("axes")?)?,
            keepdim: a.get("keepdim")? == "true",
        }),
        "argmax" => Some(Op::ArgMax { axis: num("axis")? }),
        "matmul" => Some(Op::MatMul),
        "transpose" => Some(Op::Transpose {
            perm: list(a.get("perm")?)?,
        }),
        "reshape" => Some(Op::Reshape),
        "broadcast" => Some(Op::Broadcast),
        "slice" => Some(Op::Slice {
            axis: num("axis")?,
            start: num("start")?,
            end: num("end")?,
        }),
        "concat" => Some(Op::Concat { axis: num("axis")? }),
        "pad" => Some(Op::Pad {
            axis: num("axis")?,
            before: num("before")?,
            after: num("after")?,
        }),
        "gather" => Some(Op::Gather),
        "one_hot" => Some(Op::OneHot {
            classes: num("classes")?,
        }),
        "conv2d" => Some(Op::Conv2d(window()?)),
        "conv2d_input_grad" => Some(Op::Conv2dInputGrad(window()?)),
        "conv2d_weight_grad" => Some(Op::Conv2dWeightGrad(window()?)),
        "max_pool2d" => Some(Op::MaxPool2d(window()?)),
        "max_pool2d_grad" => Some(Op::MaxPool2dGrad(window()?)),
        "avg_pool2d" => Some(Op::AvgPool2d(window()?)),
        "avg_pool2d_grad" => Some(Op::AvgPool2dGrad(window()?)),
        "random_uniform" => Some(Op::RandomUniform {
            seed: a.get("seed")?.parse().ok()?,
        }),
        "cast" => Some(Op::Cast),
        "stop_gradient" => Some(Op::StopGradient),
        _ => None,
    }?;
    Some((op, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let text = "graph train {\n  %0 = input \"x\" data : f32[2, 784]\n  %1 = input \"w\" param : f32[10, 784]\n  %2 = transpose{perm=[1, 0]} %1 : f32[784, 10]\n  %3 = matmul %0, %2 : f32[2, 10]\n  %4 = sum{axes=[0, 1], keepdim=false} %3 : f32[]\n  %5 = conv2d{k=3, stride=1, pad=1, dilation=1, groups=1} %0, %0 : f32[2, 784]\n  out \"loss\" = %4\n}\n";
        let g = parse_graph(text).expect("parses");
        assert_eq!(print_graph(&g), text);
        assert_eq!(g.nodes.len(), 6);
    }

    #[test]
    fn verifier_catches_shape_errors() {
        let ok = parse_graph("graph train {\n %0 = input \"x\" data : f32[2, 3]\n %1 = input \"w\" param : f32[3, 4]\n %2 = matmul %0, %1 : f32[2, 4]\n}").expect("parses");
        assert_eq!(verify(&ok), Ok(()));
        let bad = parse_graph("graph train {\n %0 = input \"x\" data : f32[2, 3]\n %1 = input \"w\" param : f32[4, 3]\n %2 = matmul %0, %1 : f32[2, 4]\n}").expect("parses");
        let e = verify(&bad).expect_err("inner dims differ");
        assert!(
            e.message.contains("cannot multiply [2, 3] @ [4, 3]"),
            "{}",
            e.message
        );
        let fwd = parse_graph("graph train {\n %0 = input \"x\" data : f32[2]\n %1 = exp %2 : f32[2]\n %2 = exp %0 : f32[2]\n}").expect("parses");
        assert!(
            verify(&fwd)
                .expect_err("use before def")
                .message
                .contains("not defined before its use")
        );
        let wrong =
            parse_graph("graph train {\n %0 = input \"x\" data : f32[2]\n %1 = exp %0 : f32[3]\n}")
                .expect("parses");
        assert!(verify(&wrong).is_err());
        let state = "graph train {\n %0 = input \"w\" param : f32[2]\n %1 = sum{axes=[0], keepdim=false} %0 : f32[]\n out \"state.w\" = %1\n}";
        let e = verify(&parse_graph(state).expect("parses")).expect_err("state shape");
        assert_eq!(
            e.message,
            "output `state.w` is f32[], but input `w` is f32[2]"
        );
    }
}
