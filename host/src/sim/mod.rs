//! The simulated backend: draws a real PNG without a GPU.
//!
//! The picture is a pattern derived from the prompt, seed and size only, so the same request
//! always gives the same image. It reports progress after every step (with a configurable
//! delay per step) and stops when the job is interrupted. It is the default backend, so a new
//! installation finishes jobs out of the box; tests and benchmarks use it too.

use std::time::Duration;

use tokio::task::JoinSet;

use crate::jobs::{Backend, BackendPort, Capabilities, Lease, Txt2Img};

/// Name of the simulated backend.
pub const BACKEND: &str = "simulated";

/// The simulated backend: `workers` loops, each running one job at a time, `step` per step.
#[derive(Clone, Copy, Debug)]
pub struct Simulated {
    /// Jobs it runs at once.
    pub workers: u32,
    /// Delay per sampling step.
    pub step: Duration,
}

impl Backend for Simulated {
    fn name(&self) -> String {
        BACKEND.to_owned()
    }

    async fn run(self, port: BackendPort) {
        let mut loops = JoinSet::new();
        for n in 0..self.workers {
            loops.spawn(work(port.clone(), format!("{BACKEND}-{n}"), self.step));
        }
        while loops.join_next().await.is_some() {}
    }
}

async fn work(mut port: BackendPort, name: String, step: Duration) {
    // It draws anything: every model, every size.
    let can = Capabilities::any();
    while let Some(lease) = port.next(&can).await {
        process(&name, lease, step).await;
    }
}

async fn process(name: &str, lease: Lease, step: Duration) {
    let total = lease.request().steps.max(1);
    for done in 1..=total {
        if !step.is_zero() {
            tokio::time::sleep(step).await;
        }
        if lease.progress(done, total).is_err() {
            tracing::info!(job_id = %lease.id(), backend = name, "stopped on interrupt");
            return;
        }
    }
    let request = lease.request().clone();
    let rendered = tokio::task::spawn_blocking(move || render(&request)).await;
    let result = match rendered {
        Ok(Ok(png)) => {
            let info = info_json(lease.request(), name);
            lease.finish(name, png, info).await.map_err(|e| e.error)
        }
        Ok(Err(err)) => {
            lease
                .fail(&format!("could not draw the image: {err}"))
                .await
        }
        Err(err) => lease.fail(&format!("renderer crashed: {err}")).await,
    };
    if let Err(err) = result {
        // The store is unreachable: the job stays running in the store and is requeued at the
        // next start; say so rather than lose the error.
        tracing::error!(backend = name, error = %err, "could not record a job's result");
    }
}

/// What the backend did, in the spirit of A1111's png-info.
fn info_json(request: &Txt2Img, backend: &str) -> String {
    serde_json::json!({
        "backend": backend,
        "parameters": {
            "Prompt": request.prompt,
            "Negative prompt": request.negative_prompt.clone().unwrap_or_default(),
            "Steps": request.steps,
            "Sampler": request.sampler_name,
            "Schedule type": request.scheduler_name,
            "CFG scale": request.cfg_scale,
            "Seed": request.seed,
            "Size-1": request.width,
            "Size-2": request.height,
            "Model": request.model_name,
        }
    })
    .to_string()
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between Rust releases).
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Draws the request's picture as an RGB PNG of its size.
pub fn render(request: &Txt2Img) -> Result<Vec<u8>, png::EncodingError> {
    let (width, height) = (request.width.max(1), request.height.max(1));
    let mut h = fnv1a(request.prompt.as_bytes(), 0xcbf2_9ce4_8422_2325);
    h = fnv1a(&request.seed.to_le_bytes(), h);
    h = fnv1a(request.model_name.as_bytes(), h);
    let byte = |i: u32| ((h >> (i * 8)) & 0xff) as u32;
    // Two colours and the stripe/ring frequencies come from the hash.
    let (c0, c1) = (
        [byte(0), byte(1), byte(2)],
        [255 - byte(0), byte(3), 255 - byte(2)],
    );
    let fx = 2 + byte(4) % 14;
    let fy = 2 + byte(5) % 14;
    let rings = 1 + byte(6) % 9;
    let (cx, cy) = (
        (u64::from(width) * u64::from(byte(7)) / 255) as i64,
        (u64::from(height) * u64::from(255 - byte(7)) / 255) as i64,
    );
    let max_r = (u64::from(width).pow(2) + u64::from(height).pow(2)).max(1);

    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let vy = (y * fy * 256 / height) % 256;
        for x in 0..width {
            let vx = (x * fx * 256 / width) % 256;
            let dx = i64::from(x) - cx;
            let dy = i64::from(y) - cy;
            let r = ((dx * dx + dy * dy) as u64 * u64::from(rings) * 256 / max_r) % 256;
            let t = ((vx + vy) / 2 + r as u32) % 256;
            for ch in 0..3 {
                data.push(((c0[ch] * (255 - t) + c1[ch] * t) / 255) as u8);
            }
        }
    }

    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&data)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str, seed: i64, width: u32, height: u32) -> Txt2Img {
        Txt2Img {
            prompt: prompt.into(),
            seed,
            width,
            height,
            steps: 1,
            ..Txt2Img::default()
        }
    }

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn same_request_same_image_of_requested_size() {
        let a = render(&request("a red fox", 7, 96, 64)).unwrap();
        let b = render(&request("a red fox", 7, 96, 64)).unwrap();
        assert_eq!(a, b);
        let (w, h, pixels) = decode(&a);
        assert_eq!((w, h), (96, 64));
        // Not a flat colour.
        assert!(pixels.chunks(3).any(|p| p != &pixels[..3]));
    }

    #[test]
    fn prompt_and_seed_change_the_image() {
        let base = render(&request("a red fox", 7, 64, 64)).unwrap();
        assert_ne!(base, render(&request("a blue fox", 7, 64, 64)).unwrap());
        assert_ne!(base, render(&request("a red fox", 8, 64, 64)).unwrap());
    }
}
