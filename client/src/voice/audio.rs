//! Mono PCM audio: WAV in and out, resampling, level, and chunking at quiet points.

use std::path::Path;

use super::VoiceError;

/// The most samples one [`Audio`] holds (about 35 minutes at 48 kHz, 1.7 hours at 16 kHz).
pub const MAX_SAMPLES: usize = 100_000_000;

/// Mono audio: samples in -1.0..=1.0 at `sample_rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Audio {
    pub fn new(samples: Vec<f32>, sample_rate: u32) -> Self {
        Self {
            samples,
            sample_rate: sample_rate.max(1),
        }
    }

    /// Silence of `secs` seconds.
    pub fn silence(secs: f32, sample_rate: u32) -> Self {
        Self::new(
            vec![0.0; (secs.max(0.0) * sample_rate as f32) as usize],
            sample_rate,
        )
    }

    /// Length in seconds.
    pub fn duration_secs(&self) -> f32 {
        self.samples.len() as f32 / self.sample_rate as f32
    }

    /// Root mean square level, 0.0..=1.0.
    pub fn rms(&self) -> f32 {
        rms(&self.samples)
    }

    /// The largest absolute sample.
    pub fn peak(&self) -> f32 {
        self.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()))
    }

    /// Appends `other`, resampled to this rate when they differ.
    pub fn append(&mut self, other: &Audio) {
        if other.sample_rate == self.sample_rate {
            self.samples.extend_from_slice(&other.samples);
        } else {
            self.samples
                .extend_from_slice(&other.resample(self.sample_rate).samples);
        }
        self.samples.truncate(MAX_SAMPLES);
    }

    /// Linear-interpolation resampling (good enough for speech).
    pub fn resample(&self, rate: u32) -> Audio {
        let rate = rate.max(1);
        if rate == self.sample_rate || self.samples.is_empty() {
            return Audio::new(self.samples.clone(), rate);
        }
        let ratio = self.sample_rate as f64 / rate as f64;
        let n = ((self.samples.len() as f64) / ratio).floor() as usize;
        let last = self.samples.len() - 1;
        let samples = (0..n.min(MAX_SAMPLES))
            .map(|i| {
                let pos = i as f64 * ratio;
                let j = (pos.floor() as usize).min(last);
                let frac = (pos - j as f64) as f32;
                let a = self.samples[j];
                let b = self.samples[(j + 1).min(last)];
                a + (b - a) * frac
            })
            .collect();
        Audio::new(samples, rate)
    }

    /// Splits into pieces of at most `max_secs`, cutting at the quietest 50 ms within the
    /// last fifth of each piece so words are not cut in half.
    pub fn chunks(&self, max_secs: f32) -> Vec<Audio> {
        let max = ((max_secs.max(1.0)) * self.sample_rate as f32) as usize;
        if self.samples.len() <= max {
            return vec![self.clone()];
        }
        let win = (self.sample_rate as usize / 20).max(1);
        let mut out = Vec::new();
        let mut start = 0;
        while self.samples.len() - start > max {
            let search_from = start + max - max / 5;
            let end_limit = start + max;
            let mut best = end_limit;
            let mut best_level = f32::INFINITY;
            let mut at = search_from;
            while at + win <= end_limit {
                let level = rms(&self.samples[at..at + win]);
                if level < best_level {
                    best_level = level;
                    best = at + win / 2;
                }
                at += win / 2;
            }
            out.push(Audio::new(
                self.samples[start..best].to_vec(),
                self.sample_rate,
            ));
            start = best;
        }
        out.push(Audio::new(self.samples[start..].to_vec(), self.sample_rate));
        out
    }

    /// 16-bit PCM mono WAV bytes.
    pub fn to_wav(&self) -> Vec<u8> {
        let data_len = (self.samples.len() * 2) as u32;
        let mut b = Vec::with_capacity(44 + data_len as usize);
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes()); // PCM
        b.extend_from_slice(&1u16.to_le_bytes()); // mono
        b.extend_from_slice(&self.sample_rate.to_le_bytes());
        b.extend_from_slice(&(self.sample_rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for s in &self.samples {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Writes a 16-bit PCM mono WAV file.
    pub fn write_wav(&self, path: &Path) -> Result<(), VoiceError> {
        std::fs::write(path, self.to_wav())
            .map_err(|e| VoiceError::io(format!("write {}", path.display()), e))
    }

    /// Reads a WAV file (see [`Audio::from_wav`]).
    pub fn read_wav(path: &Path) -> Result<Audio, VoiceError> {
        let bytes = std::fs::read(path)
            .map_err(|e| VoiceError::io(format!("read {}", path.display()), e))?;
        Audio::from_wav(&bytes).map_err(|e| match e {
            VoiceError::Audio(m) => VoiceError::Audio(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses WAV: PCM 8/16/24/32-bit or 32/64-bit float, any channel count (mixed down to
    /// mono). A data chunk whose length runs past the end (streamed WAV) is read to the end.
    pub fn from_wav(bytes: &[u8]) -> Result<Audio, VoiceError> {
        let bad = |m: &str| VoiceError::Audio(format!("not a usable WAV file: {m}"));
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(bad("no RIFF/WAVE header"));
        }
        let mut pos = 12;
        let mut fmt: Option<(u16, u16, u32, u16)> = None;
        while pos + 8 <= bytes.len() {
            let id = &bytes[pos..pos + 4];
            let len = u32::from_le_bytes([
                bytes[pos + 4],
                bytes[pos + 5],
                bytes[pos + 6],
                bytes[pos + 7],
            ]) as usize;
            let body_start = pos + 8;
            let body_end = body_start.saturating_add(len).min(bytes.len());
            let body = &bytes[body_start..body_end];
            if id == b"fmt " {
                if body.len() < 16 {
                    return Err(bad("short fmt chunk"));
                }
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let mut format = u16_at(0);
                let channels = u16_at(2);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                let bits = u16_at(14);
                if format == 0xFFFE && body.len() >= 26 {
                    format = u16_at(24); // WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
                }
                fmt = Some((format, channels, rate, bits));
            } else if id == b"data" {
                let (format, channels, rate, bits) = fmt.ok_or_else(|| bad("data before fmt"))?;
                return decode(body, format, channels, rate, bits);
            }
            pos = body_start.saturating_add(len).saturating_add(len & 1);
        }
        Err(bad("no data chunk"))
    }
}

fn decode(
    data: &[u8],
    format: u16,
    channels: u16,
    rate: u32,
    bits: u16,
) -> Result<Audio, VoiceError> {
    let bad = |m: String| VoiceError::Audio(format!("unsupported WAV: {m}"));
    if channels == 0 || channels > 32 {
        return Err(bad(format!("{channels} channels")));
    }
    if !(1000..=768_000).contains(&rate) {
        return Err(bad(format!("sample rate {rate}")));
    }
    let width = match (format, bits) {
        (1, 8 | 16 | 24 | 32) | (3, 32 | 64) => bits as usize / 8,
        _ => return Err(bad(format!("format {format} with {bits} bits"))),
    };
    let frame = width * channels as usize;
    let frames = (data.len() / frame).min(MAX_SAMPLES);
    let sample = |b: &[u8]| -> f32 {
        match (format, width) {
            (1, 1) => (b[0] as f32 - 128.0) / 128.0,
            (1, 2) => i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0,
            (1, 3) => (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0,
            (1, _) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
            (_, 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            _ => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        }
    };
    let samples = (0..frames)
        .map(|f| {
            let fb = &data[f * frame..(f + 1) * frame];
            let sum: f32 = fb.chunks_exact(width).map(sample).sum();
            let v = sum / channels as f32;
            if v.is_finite() {
                v.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    Ok(Audio::new(samples, rate))
}

/// Root mean square of samples.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(secs: f32, rate: u32) -> Audio {
        let n = (secs * rate as f32) as usize;
        Audio::new(
            (0..n)
                .map(|i| 0.5 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin())
                .collect(),
            rate,
        )
    }

    #[test]
    fn wav_round_trip() {
        let a = tone(0.5, 16_000);
        let b = Audio::from_wav(&a.to_wav()).expect("parse");
        assert_eq!(b.sample_rate, 16_000);
        assert_eq!(b.samples.len(), a.samples.len());
        assert!((a.rms() - b.rms()).abs() < 0.001);
    }

    #[test]
    fn streamed_wav_with_oversized_length_is_read_to_the_end() {
        let a = tone(0.25, 22_050);
        let mut w = a.to_wav();
        w[40..44].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        w[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        let b = Audio::from_wav(&w).expect("parse");
        assert_eq!(b.samples.len(), a.samples.len());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 7u64;
        for len in 0..400 {
            let mut v: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = Audio::from_wav(&v);
            if v.len() >= 12 {
                v[0..4].copy_from_slice(b"RIFF");
                v[8..12].copy_from_slice(b"WAVE");
                let _ = Audio::from_wav(&v);
            }
        }
        // A valid header with truncated data.
        let w = tone(0.1, 8000).to_wav();
        for cut in 0..w.len() {
            let _ = Audio::from_wav(&w[..cut]);
        }
    }

    #[test]
    fn resample_keeps_duration() {
        let a = tone(1.0, 44_100).resample(16_000);
        assert_eq!(a.sample_rate, 16_000);
        assert!((a.duration_secs() - 1.0).abs() < 0.01);
        assert!((a.rms() - 0.3535).abs() < 0.01);
    }

    #[test]
    fn chunks_cut_in_silence_and_lose_nothing() {
        let rate = 8000;
        let mut a = tone(8.5, rate);
        a.append(&Audio::silence(0.5, rate));
        a.append(&tone(5.0, rate));
        a.append(&Audio::silence(0.5, rate));
        a.append(&tone(3.0, rate));
        let parts = a.chunks(10.0);
        assert_eq!(parts.len(), 2);
        let total: usize = parts.iter().map(|p| p.samples.len()).sum();
        assert_eq!(total, a.samples.len());
        // The first cut lands in the silence after 8.5 s, not at 10 s.
        let d = parts[0].duration_secs();
        assert!((8.5..9.0).contains(&d), "cut at {d}");
        assert!(parts.iter().all(|p| p.duration_secs() <= 10.0));
    }
}
