//! `sam-pty-hold`: holds one terminal inside a workspace container so it outlives the node.
//!
//! - `sam-pty-hold serve SOCKET COLS ROWS -- CMD...` (started by the node with a detached
//!   `docker exec`): opens a PTY (`portable-pty`), runs CMD on it as a session leader, keeps the last
//!   [`RING`] bytes of its output with absolute offsets, and listens on SOCKET (its folder
//!   is made `0700`, owned by this user). One client at a time is attached; a new attach
//!   takes over (the old one is told [`ToNode::Replaced`]). Output is written to the client
//!   as soon as it is read (no batching timer); while no client is attached it only goes
//!   to the ring. When CMD exits, the exit status goes to the attached client, or waits for
//!   the next attach (at most [`LINGER`]); then the holder removes SOCKET and exits.
//! - `sam-pty-hold attach SOCKET [WAIT_MS]`: a relay between stdin/stdout and SOCKET (the node runs it
//!   with a non-tty `docker exec`); it ends when either side does.
//! - `sam-pty-hold probe`: prints [`PROBE`] (the node checks the binary runs here).
//!
//! The wire is in `node/src/pty_hold.rs`.

#[allow(dead_code)]
#[path = "../pty_hold.rs"]
mod pty_hold;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pty_hold::{MAX_PAYLOAD, OUTPUT_CHUNK, PROBE, RING, ToHolder, ToNode, VERSION};

/// How long an exit status waits for a client after the shell exited.
const LINGER: Duration = Duration::from_secs(3600);
/// A client that takes no output for this long is dropped (the ring keeps the bytes).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the holder waits for its first attach before it gives up.
const FIRST_ATTACH: Duration = Duration::from_secs(120);
/// Connections being set up at once (the rest wait in the listen queue).
const MAX_HANDSHAKES: usize = 8;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let code = match args.get(1).and_then(|a| a.to_str()) {
        Some("probe") => {
            println!("{PROBE}");
            0
        }
        Some("serve") => match serve(&args[2..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("sam-pty-hold serve: {e}");
                1
            }
        },
        Some("attach") => match args.get(2) {
            Some(sock) => {
                let wait = args
                    .get(3)
                    .and_then(|a| a.to_str()?.parse::<u64>().ok())
                    .unwrap_or(10_000);
                relay(Path::new(sock), Duration::from_millis(wait.min(60_000)))
            }
            None => 2,
        },
        _ => {
            eprintln!(
                "usage: sam-pty-hold probe | serve SOCKET COLS ROWS -- CMD... | attach SOCKET [WAIT_MS]"
            );
            2
        }
    };
    std::process::exit(code);
}

// ------------------------------------------------------------------ relay

fn relay(sock: &Path, wait: Duration) -> i32 {
    // The holder may still be starting: wait for its socket a little.
    let deadline = Instant::now() + wait;
    let stream = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("sam-pty-hold attach: cannot reach {}: {e}", sock.display());
                return 3;
            }
        }
    };
    let Ok(mut to_holder) = stream.try_clone() else {
        return 3;
    };
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_holder.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        // The node went away: so does this relay.
        std::process::exit(0);
    });
    let mut from_holder = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 80 * 1024];
    loop {
        match from_holder.read(&mut buf) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => {
                if stdout.write_all(&buf[..n]).is_err() || stdout.flush().is_err() {
                    return 0;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ serve

struct State {
    ring: VecDeque<u8>,
    /// Absolute offset of `ring[0]`.
    base: u64,
    client: Option<(u64, UnixStream)>,
    next_client: u64,
    exit: Option<i32>,
}

struct Holder {
    state: Mutex<State>,
    master: Mutex<Box<dyn portable_pty::MasterPty + Send>>,
    input: Mutex<Box<dyn Write + Send>>,
    sock: PathBuf,
    /// Starts the shell (taken by the first attach).
    start: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Holder {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the socket and exits the process.
    fn finish(&self) -> ! {
        let _ = std::fs::remove_file(&self.sock);
        std::process::exit(0);
    }
}

fn serve(args: &[OsString]) -> Result<(), String> {
    let [sock, cols, rows, dashes, cmd @ ..] = args else {
        return Err("serve needs SOCKET COLS ROWS -- CMD...".into());
    };
    if dashes != "--" || cmd.is_empty() {
        return Err("serve needs SOCKET COLS ROWS -- CMD...".into());
    }
    let size = |s: &OsString| {
        s.to_str()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|n| (1..=4096).contains(n))
            .ok_or_else(|| format!("bad terminal size {s:?}"))
    };
    let (cols, rows) = (size(cols)?, size(rows)?);
    let sock = PathBuf::from(sock);
    let listener = listen(&sock)?;

    let pair = portable_pty::native_pty_system()
        .openpty(pty_size(cols, rows))
        .map_err(|e| format!("cannot open a pty: {e}"))?;
    let mut command = portable_pty::CommandBuilder::from_argv(cmd.to_vec());
    if let Ok(dir) = std::env::current_dir() {
        command.cwd(dir);
    }
    let reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| format!("pty reader: {e}"))?;
    let writer = pair
        .master
        .take_writer()
        .map_err(|e| format!("pty writer: {e}"))?;
    let slave = pair.slave;
    let what = format!("{:?}", cmd[0]);

    let holder = Arc::new(Holder {
        state: Mutex::new(State {
            ring: VecDeque::with_capacity(64 * 1024),
            base: 0,
            client: None,
            next_client: 0,
            exit: None,
        }),
        master: Mutex::new(pair.master),
        input: Mutex::new(writer),
        sock,
        start: Mutex::new(None),
    });

    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = holder.clone();
    std::thread::spawn(move || {
        read_output(&h, reader);
        let _ = done_tx.send(());
    });
    // The shell starts at the first attach, so nothing it prints before the node listens
    // can fall out of the ring.
    let h = holder.clone();
    let start: Box<dyn FnOnce() + Send> = Box::new(move || {
        let spawned = slave.spawn_command(command);
        // The holder keeps no copy of the slave: the pty ends with the shell's session.
        drop(slave);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("\r\n[sam-pty-hold: cannot start {what}: {e}]\r\n");
                let mut st = h.lock();
                let offset = st.base + st.ring.len() as u64;
                st.ring.extend(msg.as_bytes());
                if let Some((_, c)) = &mut st.client {
                    let mut f = Vec::new();
                    ToNode::Output {
                        offset,
                        data: msg.into_bytes(),
                    }
                    .encode(&mut f);
                    let _ = c.write_all(&f);
                }
                drop(st);
                exited(&h, 127, None);
            }
        };
        std::thread::spawn(move || {
            let code = match child.wait() {
                Ok(s) if s.signal().is_some() => 128 + 15,
                Ok(s) => i32::try_from(s.exit_code()).unwrap_or(255),
                Err(_) => 255,
            };
            exited(&h, code, Some(done_rx));
        });
    });
    *holder.start.lock().unwrap_or_else(|p| p.into_inner()) = Some(start);
    // Nobody came (the node died at once): the shell never starts, the holder goes.
    let h = holder.clone();
    std::thread::spawn(move || {
        std::thread::sleep(FIRST_ATTACH);
        if h.start.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            h.finish();
        }
    });

    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if busy.load(Ordering::Relaxed) >= MAX_HANDSHAKES {
            continue;
        }
        busy.fetch_add(1, Ordering::Relaxed);
        let (h, b) = (holder.clone(), busy.clone());
        std::thread::spawn(move || client(&h, stream, &b));
    }
    Ok(())
}

/// The shell exited with `code`: the attached client is told and the holder ends; with
/// none, the exit waits for the next attach (at most [`LINGER`]).
fn exited(h: &Holder, code: i32, output_done: Option<std::sync::mpsc::Receiver<()>>) -> ! {
    // What the shell wrote before it exited is read first (background jobs may keep the
    // pty open: wait for it briefly only).
    if let Some(done) = output_done {
        let _ = done.recv_timeout(Duration::from_millis(500));
    }
    let mut st = h.lock();
    st.exit = Some(code);
    if let Some((_, mut c)) = st.client.take() {
        let mut f = Vec::new();
        ToNode::Exit { code }.encode(&mut f);
        let _ = c.write_all(&f);
        let _ = c.shutdown(std::net::Shutdown::Both);
        h.finish();
    }
    drop(st);
    std::thread::sleep(LINGER);
    h.finish();
}

/// Binds `sock` in a folder only this user can enter.
fn listen(sock: &Path) -> Result<UnixListener, String> {
    let dir = sock.parent().ok_or("the socket has no folder")?;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
    }
    // Someone else's folder (or a link to one) is never used.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me {
        return Err(format!(
            "{} is not a folder of this user (uid {me})",
            dir.display()
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(sock);
    UnixListener::bind(sock).map_err(|e| format!("cannot listen on {}: {e}", sock.display()))
}

fn pty_size(cols: u16, rows: u16) -> portable_pty::PtySize {
    portable_pty::PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

/// Reads the pty into the ring and the attached client until it ends.
fn read_output(h: &Holder, mut reader: Box<dyn Read + Send>) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut frame = Vec::with_capacity(OUTPUT_CHUNK + 16);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut st = h.lock();
        if st.exit.is_some() {
            return;
        }
        let offset = st.base + st.ring.len() as u64;
        st.ring.extend(&buf[..n]);
        let over = st.ring.len().saturating_sub(RING);
        if over > 0 {
            st.ring.drain(..over);
            st.base += over as u64;
        }
        if let Some((_, c)) = &mut st.client {
            frame.clear();
            ToNode::Output {
                offset,
                data: buf[..n].to_vec(),
            }
            .encode(&mut frame);
            if c.write_all(&frame).is_err() {
                // Too slow or gone: it catches up from the ring when it attaches again.
                if let Some((_, c)) = st.client.take() {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }
}

/// Reads one whole frame (bounded) from `s`.
fn read_frame(s: &mut UnixStream, buf: &mut Vec<u8>) -> Option<ToHolder> {
    loop {
        match ToHolder::decode(buf) {
            Ok(Some((f, n))) => {
                buf.drain(..n);
                return Some(f);
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        let mut chunk = [0u8; 16 * 1024];
        let want = (MAX_PAYLOAD + 5).saturating_sub(buf.len()).min(chunk.len());
        match s.read(&mut chunk[..want.max(1)]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One connection: the attach, its replay, then its input until it ends.
fn client(h: &Holder, mut s: UnixStream, busy: &AtomicUsize) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let first = read_frame(&mut s, &mut buf);
    busy.fetch_sub(1, Ordering::Relaxed);
    let Some(ToHolder::Attach {
        version: VERSION,
        from,
    }) = first
    else {
        return;
    };
    let _ = s.set_read_timeout(None);
    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(mine) = s.try_clone() else { return };
    let me;
    {
        let mut st = h.lock();
        let end = st.base + st.ring.len() as u64;
        let start = from.clamp(st.base, end);
        let mut f = Vec::with_capacity((end - start) as usize + 64);
        ToNode::Hello {
            version: VERSION,
            start,
            end,
        }
        .encode(&mut f);
        let skip = (start - st.base) as usize;
        let replay: Vec<u8> = st.ring.range(skip..).copied().collect();
        if !replay.is_empty() {
            ToNode::Output {
                offset: start,
                data: replay,
            }
            .encode(&mut f);
        }
        if let Some(code) = st.exit {
            ToNode::Exit { code }.encode(&mut f);
            let _ = s.write_all(&f);
            let _ = s.shutdown(std::net::Shutdown::Both);
            h.finish();
        }
        if s.write_all(&f).is_err() {
            return;
        }
        if let Some((_, old)) = st.client.take() {
            let mut f = Vec::new();
            ToNode::Replaced.encode(&mut f);
            let _ = old.set_nonblocking(true);
            let _ = (&old).write_all(&f);
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        me = st.next_client;
        st.next_client += 1;
        st.client = Some((me, mine));
    }
    let start = h.start.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(start) = start {
        start();
    }
    while let Some(f) = read_frame(&mut s, &mut buf) {
        match f {
            ToHolder::Input(d) => {
                let mut w = h.input.lock().unwrap_or_else(|p| p.into_inner());
                if w.write_all(&d).is_err() || w.flush().is_err() {
                    break;
                }
            }
            ToHolder::Resize { cols, rows } => {
                if (1..=4096).contains(&cols) && (1..=4096).contains(&rows) {
                    let m = h.master.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = m.resize(pty_size(cols, rows));
                }
            }
            ToHolder::Attach { .. } => break,
        }
    }
    let mut st = h.lock();
    if st.client.as_ref().is_some_and(|(id, _)| *id == me) {
        st.client = None;
    }
}
