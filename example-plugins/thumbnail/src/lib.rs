//! A service plugin that provides the `thumbnail` capability: other plugins
//! call it (`calls = ["capability:thumbnail"]`) to scale images down.
//!
//! - `make` takes `{"image": {"width": W, "height": H, "pixels": [...]},
//!   "max": M}` — a grayscale image, one byte per pixel, row by row — and
//!   answers the image scaled down (nearest neighbour) so that its longer
//!   side is at most `M`, in the same shape. An image already small enough
//!   comes back unchanged.
//! - Images whose pixel count is not `W × H`, with a side of 0 or over
//!   4096, or `M` of 0, are refused with `invalid-input`.

use capsule_guest::{Plugin, PluginError, PluginInfo, Request, Response, export_plugin, log};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest side accepted.
const MAX_SIDE: u32 = 4096;

/// A grayscale image, one byte per pixel, row by row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// An image and the longest side its thumbnail may have.
#[derive(Deserialize, JsonSchema)]
struct MakeIn {
    image: Image,
    max: u32,
}

fn make(input: MakeIn) -> Result<Image, PluginError> {
    let Image {
        width,
        height,
        ref pixels,
    } = input.image;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(PluginError::invalid_input(format!(
            "a {width}×{height} image: each side must be 1 to {MAX_SIDE}"
        )));
    }
    if pixels.len() as u64 != u64::from(width) * u64::from(height) {
        return Err(PluginError::invalid_input(format!(
            "a {width}×{height} image needs {} pixels, not {}",
            u64::from(width) * u64::from(height),
            pixels.len()
        )));
    }
    if input.max == 0 {
        return Err(PluginError::invalid_input("`max` must be at least 1"));
    }
    let longer = width.max(height);
    if longer <= input.max {
        return Ok(input.image);
    }
    // Scale both sides by max/longer, keeping at least one pixel.
    let scale =
        |side: u32| ((u64::from(side) * u64::from(input.max)) / u64::from(longer)).max(1) as u32;
    let (w, h) = (scale(width), scale(height));
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        let source_y = (u64::from(y) * u64::from(height) / u64::from(h)) as usize;
        for x in 0..w {
            let source_x = (u64::from(x) * u64::from(width) / u64::from(w)) as usize;
            out.push(pixels[source_y * width as usize + source_x]);
        }
    }
    log::debug!("{width}×{height} → {w}×{h}");
    Ok(Image {
        width: w,
        height: h,
        pixels: out,
    })
}

struct Thumbnail;

impl Plugin for Thumbnail {
    fn describe(from_cargo: PluginInfo) -> PluginInfo {
        PluginInfo {
            capabilities: vec!["thumbnail".into()],
            ..from_cargo
        }
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        request
            .dispatch()
            .typed("make", make)
            .about("Scales a grayscale image down so its longer side is at most `max`")
            .finish()
    }
}

export_plugin!(Thumbnail);

#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;

    use super::*;

    fn make(input: MakeIn) -> Result<Image, PluginError> {
        MockHost::new().run(|| super::make(input))
    }

    #[test]
    fn an_image_is_scaled_to_fit_and_a_small_one_kept() {
        let image = Image {
            width: 4,
            height: 2,
            pixels: vec![0, 1, 2, 3, 10, 11, 12, 13],
        };
        let small = make(MakeIn {
            image: image.clone(),
            max: 2,
        })
        .unwrap();
        assert_eq!(
            (small.width, small.height, small.pixels),
            (2, 1, vec![0, 2])
        );
        let same = make(MakeIn {
            image: image.clone(),
            max: 8,
        })
        .unwrap();
        assert_eq!(same, image);
    }

    #[test]
    fn inconsistent_images_are_invalid_input() {
        let bad = make(MakeIn {
            image: Image {
                width: 3,
                height: 3,
                pixels: vec![0; 8],
            },
            max: 2,
        });
        assert!(matches!(bad, Err(PluginError::InvalidInput(_))));
    }
}
