//! `nabla export FILE [NET] --params P.safetensors -o model.onnx`: a net's eval-mode
//! forward pass (batchnorm on its running statistics, no dropout) as an ONNX model at
//! opset 17, with the checkpoint's parameters and state as initializers under their
//! module names (PyTorch's) and the batch dimension symbolic (`batch`).
//!
//! The net is lowered to nabla's IR, the same graph every backend runs, twice: at batch 2
//! and at batch 3. The two graphs have the same nodes; a dimension that differs between
//! them is `k · batch`, which is how a reshape or broadcast target that involves the batch
//! becomes a shape computed from the input's at run time. Each IR op then maps to ONNX ops
//! in one place, [`Export::node`]; an op with no mapping (a gradient, a random draw) is an
//! error naming it. The protobuf messages are `onnx-protobuf`'s, generated from
//! `onnx.proto`; nothing here encodes protobuf.
//!
//! A normalization the model was trained with is not part of the graph (nabla applies it
//! when it reads images): it is recorded in the model's metadata (`normalize_mean`,
//! `normalize_std`) for whoever feeds the exported model.

use std::collections::HashMap;
use std::path::Path;

use nabla_lang::backend::Backend;
use nabla_lang::check::Checked;
use nabla_lang::check::lower::lower_net_at;
use nabla_lang::check::ty::DType;
use nabla_lang::ir::{Binary, Compare, Graph, InputKind, Mode, Op, Reduce, Unary, ValueId, Window};
use nabla_stdlib::runtime::model::Model;
use nabla_stdlib::runtime::tensors::Tensors;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, type_proto,
};

/// The ONNX opset the exported models import: ReduceMean and ReduceMax still take their
/// axes as an attribute there, ReduceSum as an input.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
const IR_VERSION: i64 = 8;
/// The batch sizes the net is lowered at to tell batch dimensions from fixed ones.
const BATCHES: [usize; 2] = [2, 3];

/// What was exported, for the command's one line.
pub struct Exported {
    pub nodes: usize,
    pub initializers: usize,
    pub bytes: usize,
}

/// Writes the ONNX model of `net` with the parameters and state of checkpoint `params`
/// to `out`, atomically.
pub fn export<B: Backend + 'static>(
    checked: &Checked,
    net: &str,
    params: &Path,
    out: &Path,
    input: Option<&[usize]>,
    b: &B,
) -> Result<Exported, String> {
    let p = &checked.program;
    // The checkpoint is read as `load` reads it: every tensor of the net, with its shape,
    // nothing else (its errors name the file and the tensor).
    let model = Model::<B>::from_file(p, b, net, params)?;
    // Exported for the input the checkpoint was made for, unless told otherwise.
    let made_for = model.input.clone();
    let input = input.or(Some(made_for.as_slice()));
    let tensors = model.tensors(b)?;
    let lower = |batch: usize| -> Result<Graph, String> {
        let l = lower_net_at(p, 0, net, batch, Mode::Eval, None, input).map_err(|d| d.message)?;
        let mut g = l.graph;
        g.outputs = vec![("logits".into(), l.output)];
        Ok(nabla_lang::opt::optimize(&g))
    };
    let (g, other) = (lower(BATCHES[0])?, lower(BATCHES[1])?);
    let batch = batch_factors(&g, &other)?;
    let mut e = Export {
        g: &g,
        batch,
        tensors: &tensors,
        names: HashMap::new(),
        nodes: Vec::new(),
        initializers: Vec::new(),
        batch_value: None,
        consts: 0,
    };
    let implicit = e.implicit();
    let mut inputs = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let v = ValueId(i as u32);
        if let Op::Input {
            name,
            kind: InputKind::Data,
        } = &n.op
        {
            inputs.push(e.value_info(name, n.dtype, &n.shape, e.batch[i].as_slice())?);
            e.names.insert(v, name.clone());
            continue;
        }
        e.node(v, implicit.contains(&v))?;
    }
    let &(_, out_v) = g.outputs.first().ok_or("the net has no output")?;
    let out_node = g.node(out_v);
    // The graph's output is named `logits`: an Identity gives it that name.
    let last = e.name(out_v);
    e.push("Identity", vec![last], "logits".into(), vec![]);
    let outputs = vec![e.value_info(
        "logits",
        out_node.dtype,
        &out_node.shape,
        &e.batch[out_v.index()],
    )?];
    let graph = GraphProto {
        name: net.to_string(),
        node: std::mem::take(&mut e.nodes),
        initializer: std::mem::take(&mut e.initializers),
        input: inputs,
        output: outputs,
        ..Default::default()
    };
    let (nodes, initializers) = (graph.node.len(), graph.initializer.len());
    let mut meta = vec![entry("net", net)];
    let list = |v: &[f32]| {
        v.iter()
            .map(|x| format!("{x:e}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    if !model.mean.is_empty() {
        meta.push(entry("normalize_mean", &list(&model.mean)));
        meta.push(entry("normalize_std", &list(&model.std)));
    }
    let onnx = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "nabla".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph).into(),
        metadata_props: meta,
        ..Default::default()
    };
    let bytes = onnx
        .write_to_bytes()
        .map_err(|e| format!("cannot encode the ONNX model: {e}"))?;
    nabla_stdlib::runtime::files::write_atomically(out, &bytes)?;
    Ok(Exported {
        nodes,
        initializers,
        bytes: bytes.len(),
    })
}

/// Per node and dimension, `Some(k)` when the dimension is `k · batch`, `None` when it is
/// fixed: read off the same net lowered at two batch sizes.
fn batch_factors(a: &Graph, b: &Graph) -> Result<Vec<Vec<Option<usize>>>, String> {
    let differ = || {
        "the net's graph depends on the batch size beyond its shapes, so it cannot be exported with a symbolic batch".to_string()
    };
    if a.nodes.len() != b.nodes.len() {
        return Err(differ());
    }
    let [ba, bb] = BATCHES;
    a.nodes
        .iter()
        .zip(&b.nodes)
        .map(|(x, y)| {
            if x.op != y.op || x.args != y.args || x.shape.len() != y.shape.len() {
                return Err(differ());
            }
            x.shape
                .iter()
                .zip(&y.shape)
                .map(|(&p, &q)| {
                    if p == q {
                        Ok(None)
                    } else if p % ba == 0 && p / ba * bb == q {
                        Ok(Some(p / ba))
                    } else {
                        Err(format!(
                            "a dimension is {p} at batch {ba} and {q} at batch {bb}: not a multiple of the batch, so it cannot be exported with a symbolic batch"
                        ))
                    }
                })
                .collect()
        })
        .collect()
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn data_type(dt: DType) -> DataType {
    match dt {
        DType::F16 => DataType::FLOAT16,
        DType::BF16 => DataType::BFLOAT16,
        DType::F32 => DataType::FLOAT,
        DType::F64 => DataType::DOUBLE,
        DType::I32 => DataType::INT32,
        DType::I64 => DataType::INT64,
        DType::U8 => DataType::UINT8,
        DType::Bool => DataType::BOOL,
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: v,
        ..Default::default()
    }
}

/// A convolution's or pooling's geometry as ONNX attributes (square kernels, equal
/// padding on every side).
fn window(w: &Window, conv: bool) -> Vec<AttributeProto> {
    let (k, s, p, d) = (
        w.kernel as i64,
        w.stride as i64,
        w.pad as i64,
        w.dilation as i64,
    );
    let mut a = vec![
        ints("kernel_shape", &[k, k]),
        ints("strides", &[s, s]),
        ints("pads", &[p, p, p, p]),
    ];
    if conv {
        a.push(ints("dilations", &[d, d]));
        a.push(int("group", w.groups as i64));
    } else if d != 1 {
        a.push(ints("dilations", &[d, d]));
    }
    a
}

/// The export in progress: ONNX nodes and initializers for the IR graph `g`.
struct Export<'a> {
    g: &'a Graph,
    /// [`batch_factors`] of `g`.
    batch: Vec<Vec<Option<usize>>>,
    tensors: &'a Tensors,
    /// The ONNX name of each IR value emitted so far.
    names: HashMap<ValueId, String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The batch size as a 1-element int64 tensor, once something needs it.
    batch_value: Option<String>,
    consts: usize,
}

impl Export<'_> {
    fn name(&self, v: ValueId) -> String {
        self.names
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("v{}", v.index()))
    }

    fn push(&mut self, op: &str, inputs: Vec<String>, output: String, attrs: Vec<AttributeProto>) {
        let k = self.nodes.len();
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: format!("{op}_{k}"),
            input: inputs,
            output: vec![output],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Whether any node or output reads `v`.
    fn used(&self, v: ValueId) -> bool {
        self.g.nodes.iter().any(|n| n.args.contains(&v))
            || self.g.outputs.iter().any(|(_, o)| *o == v)
    }

    /// A fresh name for an intermediate value.
    fn temp(&mut self, what: &str) -> String {
        self.consts += 1;
        format!("{what}_{}", self.consts)
    }

    /// An int64 constant (shapes, axes, slice bounds), as an initializer.
    fn i64s(&mut self, what: &str, v: &[i64]) -> String {
        let name = self.temp(what);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![v.len() as i64],
            data_type: DataType::INT64 as i32,
            int64_data: v.to_vec(),
            ..Default::default()
        });
        name
    }

    /// A scalar of element type `dt`, as an initializer.
    fn scalar(&mut self, c: f64, dt: DType) -> Result<String, String> {
        let name = self.temp("const");
        let mut t = TensorProto {
            name: name.clone(),
            data_type: data_type(dt) as i32,
            ..Default::default()
        };
        match dt {
            DType::F32 => t.float_data = vec![c as f32],
            DType::F64 => t.double_data = vec![c],
            DType::I32 | DType::Bool | DType::U8 => t.int32_data = vec![c as i32],
            DType::I64 => t.int64_data = vec![c as i64],
            DType::F16 | DType::BF16 => {
                return Err(format!("a {dt:?} constant has no ONNX export yet"));
            }
        }
        self.initializers.push(t);
        Ok(name)
    }

    /// The batch size, `Shape(x)[0:1]`, emitted once.
    fn batch_size(&mut self) -> Result<String, String> {
        if let Some(b) = &self.batch_value {
            return Ok(b.clone());
        }
        let x = self
            .g
            .inputs()
            .find(|(_, _, k)| *k == InputKind::Data)
            .map(|(_, n, _)| n.to_string())
            .ok_or("the net has no data input")?;
        let out = self.temp("batch");
        self.push(
            "Shape",
            vec![x],
            out.clone(),
            vec![int("start", 0), int("end", 1)],
        );
        self.batch_value = Some(out.clone());
        Ok(out)
    }

    /// The shape of node `v` as an int64 tensor: a constant, or built at run time from
    /// the batch size where dimensions are multiples of it.
    fn shape_of(&mut self, v: ValueId) -> Result<String, String> {
        let shape = self.g.node(v).shape.clone();
        let factors = self.batch[v.index()].clone();
        if factors.iter().all(Option::is_none) {
            let dims: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
            return Ok(self.i64s("shape", &dims));
        }
        let b = self.batch_size()?;
        let mut parts = Vec::new();
        for (d, f) in shape.iter().zip(&factors) {
            parts.push(match f {
                None => self.i64s("dim", &[*d as i64]),
                Some(1) => b.clone(),
                Some(k) => {
                    let kk = self.i64s("factor", &[*k as i64]);
                    let out = self.temp("dim");
                    self.push("Mul", vec![b.clone(), kk], out.clone(), vec![]);
                    out
                }
            });
        }
        let out = self.temp("shape");
        self.push("Concat", parts, out.clone(), vec![int("axis", 0)]);
        Ok(out)
    }

    /// A graph input's or output's declaration, batch dimensions symbolic.
    fn value_info(
        &self,
        name: &str,
        dt: DType,
        shape: &[usize],
        factors: &[Option<usize>],
    ) -> Result<ValueInfoProto, String> {
        let dim = |d: usize, f: Option<usize>| -> Result<Dimension, String> {
            Ok(Dimension {
                value: Some(match f {
                    None => dimension::Value::DimValue(d as i64),
                    Some(1) => dimension::Value::DimParam("batch".into()),
                    Some(_) => {
                        return Err(format!(
                            "`{name}` has a dimension that is a multiple of the batch: inputs and outputs must have the batch first"
                        ));
                    }
                }),
                ..Default::default()
            })
        };
        let dims = shape
            .iter()
            .zip(factors)
            .map(|(d, f)| dim(*d, *f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ValueInfoProto {
            name: name.into(),
            type_: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: data_type(dt) as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    /// The broadcasts and constants that ONNX's own (numpy) broadcasting makes
    /// unnecessary: every use is an elementwise op with two or three operands whose other
    /// operand already has the op's full shape, so the small tensor broadcasts there, or
    /// a matmul that broadcasts the leading dimensions itself. The IR's broadcast aligns
    /// shapes from the right and stretches 1s, as numpy does. (Besides saving the copy,
    /// this keeps `tract` from a failure of its own on a matmul fed by an `Expand`.)
    fn implicit(&self) -> std::collections::HashSet<ValueId> {
        let g = self.g;
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for a in &n.args {
                users[a.index()].push(i);
            }
        }
        let outputs: Vec<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
        let candidate = |v: ValueId| matches!(g.node(v).op, Op::Broadcast | Op::Const(_));
        (0..g.nodes.len())
            .map(|i| ValueId(i as u32))
            .filter(|&v| candidate(v) && !outputs.contains(&v))
            .filter(|&v| {
                !users[v.index()].is_empty()
                    && users[v.index()].iter().all(|&u| {
                        let n = &g.nodes[u];
                        let full = |o: ValueId, want: &[usize]| {
                            o != v && !candidate(o) && g.node(o).shape == want
                        };
                        match n.op {
                            Op::Binary(_) | Op::Compare(_) | Op::Select => {
                                n.args.iter().any(|&o| full(o, &n.shape))
                            }
                            // MatMul broadcasts the dimensions before the last two, so a
                            // broadcast that only adds or stretches those is implicit
                            // when the other operand has them all.
                            Op::MatMul => {
                                let (x, r) = (g.node(v), n.shape.len());
                                let src = g.node(g.node(v).args.first().copied().unwrap_or(v));
                                let lead = |o: ValueId| {
                                    let s = &g.node(o).shape;
                                    s.len() == r && s[..r - 2] == n.shape[..r - 2]
                                };
                                matches!(x.op, Op::Broadcast)
                                    && r >= 2
                                    && src.shape.len() >= 2
                                    && src.shape[src.shape.len() - 2..] == x.shape[r - 2..]
                                    && n.args.iter().any(|&o| o != v && !candidate(o) && lead(o))
                            }
                            _ => false,
                        }
                    })
            })
            .collect()
    }

    /// Emits the ONNX nodes of IR node `v` (`implicit`: see [`Export::implicit`]).
    fn node(&mut self, v: ValueId, implicit: bool) -> Result<(), String> {
        let g = self.g;
        let n = g.node(v);
        let out = format!("v{}", v.index());
        let a: Vec<String> = n.args.iter().map(|x| self.name(*x)).collect();
        let arg = |k: usize| a.get(k).cloned().unwrap_or_default();
        let unsupported = |what: &str| {
            Err(format!(
                "the op `{what}` has no ONNX mapping, so this net cannot be exported (an eval-mode forward pass does not use it)"
            ))
        };
        match &n.op {
            Op::Input { name, kind } => match kind {
                // State the forward pass does not read (batchnorm's step count) is left
                // out rather than carried as an unused initializer.
                InputKind::Param | InputKind::State if !self.used(v) => return Ok(()),
                InputKind::Param | InputKind::State => {
                    let t = self.tensors.get(name).ok_or_else(|| {
                        format!("the checkpoint has no tensor `{name}` for the model's input")
                    })?;
                    // A parameter whose shape follows the input (ViT's position embedding)
                    // cannot take the checkpoint's at another input size.
                    if t.shape != n.shape {
                        return Err(format!(
                            "`{name}` is {:?} at this input size, but {:?} in the checkpoint: export at the size the model was trained for",
                            n.shape, t.shape
                        ));
                    }
                    self.initializers.push(TensorProto {
                        name: name.clone(),
                        dims: t.shape.iter().map(|d| *d as i64).collect(),
                        data_type: DataType::FLOAT as i32,
                        raw_data: t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ..Default::default()
                    });
                    self.names.insert(v, name.clone());
                    return Ok(());
                }
                InputKind::Data | InputKind::Label | InputKind::Cotangent => {
                    return Err(format!(
                        "the net's graph takes `{name}`, which an exported forward pass cannot"
                    ));
                }
            },
            Op::Const(c) => {
                let s = self.scalar(*c, n.dtype)?;
                if implicit || n.shape.is_empty() {
                    self.names.insert(v, s);
                    return Ok(());
                }
                let shape = self.shape_of(v)?;
                self.push("Expand", vec![s, shape], out.clone(), vec![]);
            }
            Op::Broadcast => {
                if implicit {
                    self.names.insert(v, arg(0));
                    return Ok(());
                }
                let shape = self.shape_of(v)?;
                self.push("Expand", vec![arg(0), shape], out.clone(), vec![]);
            }
            Op::Unary(u) => {
                let op = match u {
                    Unary::Neg => "Neg",
                    Unary::Exp => "Exp",
                    Unary::Log => "Log",
                    Unary::Tanh => "Tanh",
                    Unary::Sigmoid => "Sigmoid",
                    Unary::Relu => "Relu",
                    Unary::Sqrt => "Sqrt",
                    Unary::Abs => "Abs",
                    Unary::Erf => "Erf",
                    Unary::Sin => "Sin",
                    Unary::Cos => "Cos",
                    Unary::Sign => "Sign",
                    // 1/√x: ONNX has no rsqrt.
                    Unary::Rsqrt => {
                        let root = self.temp("sqrt");
                        self.push("Sqrt", vec![arg(0)], root.clone(), vec![]);
                        self.push("Reciprocal", vec![root], out.clone(), vec![]);
                        self.names.insert(v, out);
                        return Ok(());
                    }
                };
                self.push(op, a, out.clone(), vec![]);
            }
            Op::Binary(b) => {
                let op = match b {
                    Binary::Add => "Add",
                    Binary::Sub => "Sub",
                    Binary::Mul => "Mul",
                    Binary::Div => "Div",
                    Binary::Max => "Max",
                    Binary::Min => "Min",
                    Binary::Pow => "Pow",
                };
                self.push(op, a, out.clone(), vec![]);
            }
            Op::Compare(c) => {
                let op = match c {
                    Compare::Eq | Compare::Ne => "Equal",
                    Compare::Lt => "Less",
                    Compare::Le => "LessOrEqual",
                    Compare::Gt => "Greater",
                    Compare::Ge => "GreaterOrEqual",
                };
                if *c == Compare::Ne {
                    let eq = self.temp("equal");
                    self.push(op, a, eq.clone(), vec![]);
                    self.push("Not", vec![eq], out.clone(), vec![]);
                } else {
                    self.push(op, a, out.clone(), vec![]);
                }
            }
            Op::Select => self.push("Where", a, out.clone(), vec![]),
            Op::Reduce { op, axes, keepdim } => {
                let axes: Vec<i64> = axes.iter().map(|x| *x as i64).collect();
                let keep = int("keepdims", i64::from(*keepdim));
                match op {
                    Reduce::Sum => {
                        let ax = self.i64s("axes", &axes);
                        self.push("ReduceSum", vec![arg(0), ax], out.clone(), vec![keep]);
                    }
                    Reduce::Max => {
                        self.push(
                            "ReduceMax",
                            vec![arg(0)],
                            out.clone(),
                            vec![ints("axes", &axes), keep],
                        );
                    }
                }
            }
            Op::ArgMax { axis } => {
                let i = self.temp("argmax");
                self.push(
                    "ArgMax",
                    vec![arg(0)],
                    i.clone(),
                    vec![int("axis", *axis as i64), int("keepdims", 0)],
                );
                self.push(
                    "Cast",
                    vec![i],
                    out.clone(),
                    vec![int("to", data_type(n.dtype) as i64)],
                );
            }
            Op::MatMul => self.push("MatMul", a, out.clone(), vec![]),
            Op::Transpose { perm } => {
                let perm: Vec<i64> = perm.iter().map(|x| *x as i64).collect();
                self.push("Transpose", a, out.clone(), vec![ints("perm", &perm)]);
            }
            Op::Reshape => {
                let shape = self.shape_of(v)?;
                self.push("Reshape", vec![arg(0), shape], out.clone(), vec![]);
            }
            Op::Slice { axis, start, end } => {
                let s = self.i64s("starts", &[*start as i64]);
                let e = self.i64s("ends", &[*end as i64]);
                let x = self.i64s("axes", &[*axis as i64]);
                self.push("Slice", vec![arg(0), s, e, x], out.clone(), vec![]);
            }
            Op::Pad {
                axis,
                before,
                after,
            } => {
                let rank = n.shape.len();
                let mut pads = vec![0i64; 2 * rank];
                pads[*axis] = *before as i64;
                pads[rank + axis] = *after as i64;
                let p = self.i64s("pads", &pads);
                self.push("Pad", vec![arg(0), p], out.clone(), vec![]);
            }
            Op::Concat { axis } => {
                self.push("Concat", a, out.clone(), vec![int("axis", *axis as i64)]);
            }
            Op::Gather => {
                let idx = self.temp("indices");
                self.push(
                    "Cast",
                    vec![arg(1)],
                    idx.clone(),
                    vec![int("to", DataType::INT64 as i64)],
                );
                self.push(
                    "Gather",
                    vec![arg(0), idx],
                    out.clone(),
                    vec![int("axis", 0)],
                );
            }
            Op::OneHot { classes } => {
                let idx = self.temp("indices");
                self.push(
                    "Cast",
                    vec![arg(0)],
                    idx.clone(),
                    vec![int("to", DataType::INT64 as i64)],
                );
                let depth = self.i64s("depth", &[*classes as i64]);
                let values = self.temp("onehot_values");
                self.initializers.push(TensorProto {
                    name: values.clone(),
                    dims: vec![2],
                    data_type: DataType::FLOAT as i32,
                    float_data: vec![0.0, 1.0],
                    ..Default::default()
                });
                let hot = self.temp("onehot");
                self.push(
                    "OneHot",
                    vec![idx, depth, values],
                    hot.clone(),
                    vec![int("axis", -1)],
                );
                self.push(
                    "Cast",
                    vec![hot],
                    out.clone(),
                    vec![int("to", data_type(n.dtype) as i64)],
                );
            }
            Op::Conv2d(w) => self.push("Conv", a, out.clone(), window(w, true)),
            Op::MaxPool2d(w) => self.push("MaxPool", a, out.clone(), window(w, false)),
            Op::AvgPool2d(w) => {
                // nabla's average pooling counts the padding as zeros, as PyTorch's default.
                let mut attrs = window(w, false);
                attrs.push(int("count_include_pad", 1));
                self.push("AveragePool", a, out.clone(), attrs);
            }
            Op::Cast => {
                self.push(
                    "Cast",
                    a,
                    out.clone(),
                    vec![int("to", data_type(n.dtype) as i64)],
                );
            }
            Op::StopGradient => self.push("Identity", a, out.clone(), vec![]),
            op @ (Op::Conv2dInputGrad(_)
            | Op::Conv2dWeightGrad(_)
            | Op::MaxPool2dGrad(_)
            | Op::AvgPool2dGrad(_)
            | Op::RandomUniform { .. }) => return unsupported(op.name()),
        }
        self.names.insert(v, out);
        Ok(())
    }
}
