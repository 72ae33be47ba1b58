//! The sound card through cpal (ALSA on Linux). Every function returns
//! [`VoiceError::Device`] when there is no usable device; nothing panics.
//!
//! cpal streams are not `Send` everywhere, so each stream lives on its own thread and
//! talks to the rest through channels.

use std::sync::mpsc;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SizedSample};

use super::{Sink, VoiceError};

const NO_OUTPUT: &str = "no audio output device (no sound card, or none this user may open): write the audio to a file instead (`sam say … --out FILE.wav`)";
const NO_INPUT: &str = "no microphone (no audio input device, or none this user may open): record elsewhere and use a WAV file (`sam prompt CONV --audio FILE.wav`)";

/// Playback on the default output device. `write` blocks while the device's small buffer
/// is full, which paces the [`super::Player`].
pub struct DeviceSink {
    tx: Option<mpsc::SyncSender<Vec<f32>>>,
    rate: u32,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeviceSink {
    /// Opens the default output device.
    pub fn open() -> Result<Self, VoiceError> {
        let (tx, rx) = mpsc::sync_channel::<Vec<f32>>(4);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, VoiceError>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sam-audio-out".into())
            .spawn(move || {
                let stream = match output_stream(rx) {
                    Ok((s, rate)) => {
                        let _ = ready_tx.send(Ok(rate));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = stop_rx.recv();
                drop(stream);
            })
            .map_err(|e| VoiceError::Device(format!("cannot start the audio thread: {e}")))?;
        let rate = match ready_rx.recv() {
            Ok(Ok(rate)) => rate,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(VoiceError::Device(NO_OUTPUT.into()));
            }
        };
        Ok(Self {
            tx: Some(tx),
            rate,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Sink for DeviceSink {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), VoiceError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| VoiceError::Device("the output is closed".into()))?;
        tx.send(samples.to_vec())
            .map_err(|_| VoiceError::Device("the audio output stopped".into()))
    }
}

impl Drop for DeviceSink {
    fn drop(&mut self) {
        self.tx.take();
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn output_stream(rx: mpsc::Receiver<Vec<f32>>) -> Result<(cpal::Stream, u32), VoiceError> {
    let host = cpal::default_host();
    let device = host
        .default_output_device()
        .ok_or_else(|| VoiceError::Device(NO_OUTPUT.into()))?;
    let supported = device
        .default_output_config()
        .map_err(|e| VoiceError::Device(format!("{NO_OUTPUT} ({e})")))?;
    let config: cpal::StreamConfig = supported.config();
    let rate = config.sample_rate.0;
    let stream = match supported.sample_format() {
        cpal::SampleFormat::F32 => build_output::<f32>(&device, &config, rx),
        cpal::SampleFormat::I16 => build_output::<i16>(&device, &config, rx),
        cpal::SampleFormat::U16 => build_output::<u16>(&device, &config, rx),
        cpal::SampleFormat::I32 => build_output::<i32>(&device, &config, rx),
        other => {
            return Err(VoiceError::Device(format!(
                "the output device wants {other} samples, which SAM does not write"
            )));
        }
    }?;
    stream
        .play()
        .map_err(|e| VoiceError::Device(format!("cannot start playback: {e}")))?;
    Ok((stream, rate))
}

fn build_output<T: SizedSample + FromSample<f32>>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    rx: mpsc::Receiver<Vec<f32>>,
) -> Result<cpal::Stream, VoiceError> {
    let channels = config.channels.max(1) as usize;
    let mut pending: Vec<f32> = Vec::new();
    let mut at = 0;
    device
        .build_output_stream(
            config,
            move |data: &mut [T], _: &cpal::OutputCallbackInfo| {
                for frame in data.chunks_mut(channels) {
                    if at >= pending.len() {
                        match rx.try_recv() {
                            Ok(next) => {
                                pending = next;
                                at = 0;
                            }
                            Err(_) => {
                                pending.clear();
                                at = 0;
                            }
                        }
                    }
                    let s = pending.get(at).copied().unwrap_or(0.0);
                    at += 1;
                    for out in frame.iter_mut() {
                        *out = T::from_sample(s);
                    }
                }
            },
            |e| tracing::warn!("audio output: {e}"),
            None,
        )
        .map_err(|e| VoiceError::Device(format!("{NO_OUTPUT} ({e})")))
}

/// A running capture from the default input device; dropping it stops the capture.
pub struct InputStream {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub sample_rate: u32,
}

impl Drop for InputStream {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts capturing mono samples from the default input device; `on_samples` runs on the
/// audio thread with each block.
pub fn open_input(
    on_samples: impl FnMut(&[f32]) + Send + 'static,
) -> Result<InputStream, VoiceError> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, VoiceError>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sam-audio-in".into())
        .spawn(move || {
            let stream = match input_stream(on_samples) {
                Ok((s, rate)) => {
                    let _ = ready_tx.send(Ok(rate));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = stop_rx.recv();
            drop(stream);
        })
        .map_err(|e| VoiceError::Device(format!("cannot start the audio thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(sample_rate)) => Ok(InputStream {
            stop: Some(stop_tx),
            thread: Some(thread),
            sample_rate,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(VoiceError::Device(NO_INPUT.into()))
        }
    }
}

fn input_stream(
    on_samples: impl FnMut(&[f32]) + Send + 'static,
) -> Result<(cpal::Stream, u32), VoiceError> {
    let host = cpal::default_host();
    let device = host
        .default_input_device()
        .ok_or_else(|| VoiceError::Device(NO_INPUT.into()))?;
    let supported = device
        .default_input_config()
        .map_err(|e| VoiceError::Device(format!("{NO_INPUT} ({e})")))?;
    let config: cpal::StreamConfig = supported.config();
    let rate = config.sample_rate.0;
    let stream = match supported.sample_format() {
        cpal::SampleFormat::F32 => build_input::<f32>(&device, &config, on_samples),
        cpal::SampleFormat::I16 => build_input::<i16>(&device, &config, on_samples),
        cpal::SampleFormat::U16 => build_input::<u16>(&device, &config, on_samples),
        cpal::SampleFormat::I32 => build_input::<i32>(&device, &config, on_samples),
        other => {
            return Err(VoiceError::Device(format!(
                "the microphone gives {other} samples, which SAM does not read"
            )));
        }
    }?;
    stream
        .play()
        .map_err(|e| VoiceError::Device(format!("cannot start recording: {e}")))?;
    Ok((stream, rate))
}

fn build_input<T: SizedSample>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    mut on_samples: impl FnMut(&[f32]) + Send + 'static,
) -> Result<cpal::Stream, VoiceError>
where
    f32: FromSample<T>,
{
    let channels = config.channels.max(1) as usize;
    let mut mono = Vec::new();
    device
        .build_input_stream(
            config,
            move |data: &[T], _: &cpal::InputCallbackInfo| {
                mono.clear();
                mono.extend(
                    data.chunks(channels).map(|f| {
                        f.iter().map(|s| f32::from_sample(*s)).sum::<f32>() / f.len() as f32
                    }),
                );
                on_samples(&mono);
            },
            |e| tracing::warn!("audio input: {e}"),
            None,
        )
        .map_err(|e| VoiceError::Device(format!("{NO_INPUT} ({e})")))
}

#[cfg(test)]
mod tests {
    /// On a machine without a sound card (CI) opening the devices is an error, not a panic;
    /// with one, it works. Either way it returns.
    #[test]
    fn devices_open_or_fail_cleanly() {
        match super::DeviceSink::open() {
            Ok(_) => {}
            Err(e) => assert!(matches!(e, super::VoiceError::Device(_)), "{e}"),
        }
        match super::open_input(|_| {}) {
            Ok(_) => {}
            Err(e) => assert!(matches!(e, super::VoiceError::Device(_)), "{e}"),
        }
    }
}
