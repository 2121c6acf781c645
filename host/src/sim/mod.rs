//! The simulated backend: draws a real PNG without a GPU.
//!
//! The picture is a pattern derived from the prompt, seed and size only, so the same request
//! always gives the same image (a seed of -1 becomes a random one, reported as Forge reports
//! it). img2img blends the pattern into the starting picture (inside the mask, if there is
//! one), and upscale-hrf starts from the first pass at twice its size. It reports progress
//! after every step (with a configurable delay per step), with a live preview at most every
//! [`PREVIEW_EVERY`] when steps take time, and when the job is interrupted it stops and keeps
//! the partial picture, as Forge does. Its [`catalog`] answers the list routes when no Forge
//! machine is configured. It is the default backend, so a new installation finishes jobs
//! out of the box; tests and benchmarks use it too.

mod catalog;

use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::task::JoinSet;

pub use catalog::{MODELS, catalog, scheduler_label};

use crate::jobs::{Backend, BackendPort, Capabilities, Lease, Task, Txt2Img};

/// Shortest time between two live previews of one job.
pub const PREVIEW_EVERY: Duration = Duration::from_millis(200);

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
    let mut request = lease.request().clone();
    if request.seed == -1 {
        request.seed = i64::from(rand::random::<u32>() >> 1);
    }
    let total = request.steps.max(1);
    let mut last_preview: Option<Instant> = None;
    let mut stopped_at = None;
    for done in 1..=total {
        if !step.is_zero() {
            tokio::time::sleep(step).await;
        }
        let preview_due = !step.is_zero()
            && done < total
            && last_preview.is_none_or(|at| at.elapsed() >= PREVIEW_EVERY);
        let told = if preview_due {
            last_preview = Some(Instant::now());
            let partial = request.clone();
            match tokio::task::spawn_blocking(move || draw(&partial, Some((done, total)), 128))
                .await
            {
                Ok(Ok(png)) => lease.progress_with_preview(done, total, &png).await,
                _ => lease.progress(done, total),
            }
        } else {
            lease.progress(done, total)
        };
        if told.is_err() {
            tracing::info!(job_id = %lease.id(), backend = name, step = done, "stopped on interrupt");
            stopped_at = Some(done);
            break;
        }
    }
    let drawn = request.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        draw(&drawn, stopped_at.map(|done| (done, total)), u32::MAX)
    })
    .await;
    let result = match rendered {
        Ok(Ok(png)) if stopped_at.is_some() => {
            let info = info_json(&request, lease.owner(), name);
            lease.finish_partial(name, png, info).await
        }
        Ok(Ok(png)) => {
            let info = info_json(&request, lease.owner(), name);
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

/// What the backend did, in the shape of Forge's png-info answer (its values are strings,
/// as Forge's are), with the owner and the distilled CFG as Navigator caches them.
fn info_json(request: &Txt2Img, owner: &str, backend: &str) -> String {
    let mut text = request.prompt.clone();
    if let Some(negative) = request.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
        text.push_str("\nNegative prompt: ");
        text.push_str(negative);
    }
    let mut pairs = vec![
        ("Steps", request.steps.to_string()),
        ("Sampler", request.sampler_name.clone()),
        (
            "Schedule type",
            scheduler_label(&request.scheduler_name).to_owned(),
        ),
        ("CFG scale", request.cfg_scale.to_string()),
        ("Seed", request.seed.to_string()),
        ("Size", format!("{}x{}", request.width, request.height)),
        ("Model", request.model_name.clone()),
    ];
    if request.denoising_strength > 0.0 {
        pairs.push(("Denoising strength", request.denoising_strength.to_string()));
    }
    if let (Some(seed), Some(strength)) = (request.subseed, request.subseed_strength) {
        pairs.push(("Variation seed", seed.to_string()));
        pairs.push(("Variation seed strength", strength.to_string()));
    }
    for (n, module) in request.modules.iter().flatten().enumerate() {
        pairs.push(("Module", format!("{} {module}", n + 1)));
    }
    pairs.push(("Version", format!("easel-{backend}")));
    let line: Vec<String> = pairs
        .iter()
        .map(|(k, v)| match *k {
            "Module" => {
                let (n, name) = v.split_once(' ').unwrap_or(("1", v));
                format!("Module {n}: {name}")
            }
            _ => format!("{k}: {v}"),
        })
        .collect();
    text.push('\n');
    text.push_str(&line.join(", "));
    let mut parameters = serde_json::Map::new();
    parameters.insert("Prompt".into(), request.prompt.clone().into());
    parameters.insert(
        "Negative prompt".into(),
        request.negative_prompt.clone().unwrap_or_default().into(),
    );
    for (k, v) in &pairs {
        match *k {
            "Size" => {
                parameters.insert("Size-1".into(), request.width.to_string().into());
                parameters.insert("Size-2".into(), request.height.to_string().into());
            }
            "Module" => {
                let (n, name) = v.split_once(' ').unwrap_or(("1", v));
                parameters.insert(format!("Module {n}"), name.into());
            }
            _ => {
                parameters.insert((*k).into(), v.clone().into());
            }
        }
    }
    if request.image_enhancements {
        parameters.insert("freeu_enabled".into(), "True".into());
        parameters.insert("sag_enabled".into(), "True".into());
    }
    parameters.insert("owner_id".into(), owner.into());
    if request.task == Task::Txt2Img {
        parameters.insert("distilled_cfg".into(), request.distilled_cfg.into());
    }
    serde_json::json!({
        "info": text,
        "items": {"parameters": text},
        "parameters": parameters,
        "seed": request.seed,
    })
    .to_string()
}

/// The picture a request asks for (`partial`: stopped after this many of so many steps,
/// darker the less was done), at most `max_side` on its longer side (previews).
fn draw(
    request: &Txt2Img,
    partial: Option<(u32, u32)>,
    max_side: u32,
) -> Result<Vec<u8>, png::EncodingError> {
    let hires = if request.force_hr_fix { 2 } else { 1 };
    let (mut width, mut height) = (request.width.max(1) * hires, request.height.max(1) * hires);
    let longer = width.max(height);
    if longer > max_side {
        width = (u64::from(width) * u64::from(max_side) / u64::from(longer)).max(1) as u32;
        height = (u64::from(height) * u64::from(max_side) / u64::from(longer)).max(1) as u32;
    }
    let mut pixels = pattern(request, width, height);
    let base = match request.task {
        Task::Img2Img => request.init_image.as_deref(),
        Task::Txt2Img => request.first_pass_image.as_deref(),
    };
    if let Some(base) = base.and_then(|b64| decode_rgba(b64, width, height)) {
        let mask = request
            .mask
            .as_deref()
            .and_then(|b64| decode_rgba(b64, width, height));
        let strength = match request.task {
            Task::Img2Img if request.denoising_strength > 0.0 => request.denoising_strength,
            Task::Img2Img => 0.75,
            Task::Txt2Img => 0.35,
        };
        for (i, px) in pixels.chunks_mut(3).enumerate() {
            let painted = mask.as_ref().is_none_or(|m| m[i * 4 + 3] > 0);
            let s = if painted { strength } else { 0.0 };
            for ch in 0..3 {
                let from = f64::from(base[i * 4 + ch]);
                px[ch] = (from * (1.0 - s) + f64::from(px[ch]) * s) as u8;
            }
        }
    }
    if let Some((done, total)) = partial {
        let lit = 0.25 + 0.75 * f64::from(done) / f64::from(total.max(1));
        for v in &mut pixels {
            *v = (f64::from(*v) * lit) as u8;
        }
    }
    encode(width, height, &pixels)
}

/// A base64 PNG as RGBA pixels of `width`×`height` (nearest-neighbour scaled); `None` if it
/// is not a PNG.
fn decode_rgba(b64: &str, width: u32, height: u32) -> Option<Vec<u8>> {
    let b64 = b64.split_once("base64,").map_or(b64, |(_, rest)| rest);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let frame = reader.next_frame(&mut buf).ok()?;
    let channels = frame.color_type.samples();
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut out = Vec::with_capacity(width as usize * height as usize * 4);
    for y in 0..height as usize {
        let sy = y * h / height as usize;
        for x in 0..width as usize {
            let sx = x * w / width as usize;
            let p = &buf[(sy * w + sx) * channels..][..channels];
            let rgba = match channels {
                1 => [p[0], p[0], p[0], 255],
                2 => [p[0], p[0], p[0], p[1]],
                3 => [p[0], p[1], p[2], 255],
                _ => [p[0], p[1], p[2], p[3]],
            };
            out.extend_from_slice(&rgba);
        }
    }
    Some(out)
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
    encode(width, height, &pattern(request, width, height))
}

/// The request's pattern as RGB pixels of `width`×`height`.
fn pattern(request: &Txt2Img, width: u32, height: u32) -> Vec<u8> {
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
    data
}

/// RGB pixels as a PNG.
fn encode(width: u32, height: u32, data: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(data)?;
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
