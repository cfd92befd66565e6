//! `nabla predict FILE [NET] --params P.safetensors IMAGE...`: a trained model's top
//! classes for images. The parameters come from a checkpoint of the net (its
//! normalization, when it was trained with one, is applied as in training); each image is
//! decoded, converted to the net's channels (gray or RGB), resized to its input and run
//! through the prediction step (softmax of the logits, eval mode).

use std::path::{Path, PathBuf};

use nabla_lang::backend::Backend;
use nabla_lang::check::Checked;
use nabla_stdlib::runtime::data::image_split;
use nabla_stdlib::runtime::model::Model;

/// Prints the `top` most probable classes of each image.
pub fn predict<B: Backend + 'static>(
    checked: &Checked,
    net: &str,
    params: &Path,
    images: &[PathBuf],
    top: usize,
    b: &B,
) -> Result<(), crate::Failure> {
    if images.is_empty() {
        return Err(crate::Failure::Message(
            "no images: name PNG or JPEG files after the options".into(),
        ));
    }
    let mut m =
        Model::<B>::from_file(&checked.program, b, net, params).map_err(crate::Failure::Message)?;
    let shape: [usize; 3] = m.input.as_slice().try_into().map_err(|_| {
        crate::Failure::Message(format!(
            "`{net}` takes inputs of shape {:?}: `nabla predict` reads images, [channels, height, width]",
            m.input
        ))
    })?;
    let split = image_split(images, shape).map_err(crate::Failure::Message)?;
    let probs = m
        .predict(&checked.program, b, &split, 64)
        .map_err(crate::Failure::Message)?;
    for (path, row) in images.iter().zip(probs.rows()) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|x, y| row[*y].total_cmp(&row[*x]).then(x.cmp(y)));
        let shown: Vec<String> = order
            .iter()
            .take(top.max(1))
            .map(|k| format!("{k} ({:.4})", row[*k]))
            .collect();
        println!("{}: {}", path.display(), shown.join(", "));
    }
    Ok(())
}
