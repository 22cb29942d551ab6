//! Power-loss simulation for tests: an ext4 file system on a loop device over a device that
//! loses every write not yet flushed ([`LossyDisk`]).
//!
//! The kernel here has no device-mapper (`dm-log-writes`, `dm-flakey` and snapshots are
//! unavailable), so the lossy layer is a block device image served by FUSE: the loop driver
//! turns ext4's cache flushes and FUA writes into fsyncs of the image, which is exactly the
//! point where this layer makes writes durable. A [`PowerFs::cut`] keeps only what was flushed;
//! [`PowerFs::restart`] unmounts (its writes go nowhere), reattaches and mounts again, so ext4
//! replays its journal over the surviving state, as after a real power cut.
//!
//! Needs root, `/dev/fuse`, `losetup`, `mkfs.ext4` and `mount`.

mod disk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use disk::{LossyDisk, Stats, IMAGE_NAME};

/// What went wrong setting up or cycling the simulated power.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An external tool failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Why power-loss tests cannot run here, if they cannot (not root, no `/dev/fuse`, a tool
/// missing); `None` when they can.
pub fn unsupported() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some("not running as root (FUSE and loop mounts need root)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    for tool in ["losetup", "mkfs.ext4", "mount", "umount"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn run(cmd: &mut Command) -> Result<String, Error> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| Error::Io {
        what: format!("running {command}"),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// An ext4 file system on a loop device over a [`LossyDisk`], mounted at [`PowerFs::mount`].
#[derive(Debug)]
pub struct PowerFs {
    disk: LossyDisk,
    mount: PathBuf,
    loop_dev: Option<String>,
}

impl PowerFs {
    /// Makes a `size`-byte device under `dir` (FUSE at `dir/dev`), an ext4 on it, and mounts it
    /// at `dir/mnt`.
    pub fn new(dir: &Path, size: u64) -> Result<PowerFs, Error> {
        let dev = dir.join("dev");
        let mount = dir.join("mnt");
        for d in [&dev, &mount] {
            std::fs::create_dir_all(d).map_err(|source| Error::Io {
                what: format!("creating {}", d.display()),
                source,
            })?;
        }
        let disk = LossyDisk::mount(&dev, size)?;
        // mkfs syncs what it wrote; the inode tables are written now rather than by a
        // background thread after mount.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E"])
            .arg("nodiscard,lazy_itable_init=0,lazy_journal_init=0")
            .arg(disk.image()))?;
        let mut fs = PowerFs {
            disk,
            mount,
            loop_dev: None,
        };
        fs.attach_and_mount()?;
        Ok(fs)
    }

    /// Where the file system is mounted.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The device under the file system.
    pub fn disk(&self) -> &LossyDisk {
        &self.disk
    }

    /// The power goes: everything not flushed to the device is lost from this instant; the
    /// file system stays mounted (on a dead device) until [`PowerFs::restart`]. Stop every
    /// process using the file system before restarting. Returns the pages lost.
    pub fn cut(&self) -> u64 {
        self.disk.cut()
    }

    /// After a [`PowerFs::cut`]: unmounts (nothing it writes reaches the device), detaches the
    /// loop device, powers the device on and mounts again, which replays the journal.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.unmount()?;
        self.disk.revive();
        self.attach_and_mount()
    }

    fn attach_and_mount(&mut self) -> Result<(), Error> {
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(self.disk.image()))?;
        self.loop_dev = Some(dev.clone());
        run(Command::new("mount")
            .args(["-t", "ext4", &dev])
            .arg(&self.mount))?;
        Ok(())
    }

    fn unmount(&mut self) -> Result<(), Error> {
        if let Some(dev) = self.loop_dev.take() {
            // A process that just died may still be releasing its files: retry briefly.
            let mut tries = 0;
            loop {
                match run(Command::new("umount").arg(&self.mount)) {
                    Ok(_) => break,
                    Err(e) if tries >= 50 => return Err(e),
                    Err(_) => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            run(Command::new("losetup").args(["-d", &dev]))?;
        }
        Ok(())
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "tearing down the power-loss file system");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn write(path: &Path, data: &[u8], sync: bool) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(data).unwrap();
        if sync {
            f.sync_all().unwrap();
            std::fs::File::open(path.parent().unwrap())
                .unwrap()
                .sync_all()
                .unwrap();
        }
    }

    /// The layer itself: what was fsynced survives a cut byte for byte, what was not is gone
    /// (not merely stale in a cache), and the file system mounts clean afterwards.
    #[test]
    fn a_cut_keeps_what_was_synced_and_loses_what_was_not() {
        if let Some(why) = unsupported() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut fs = PowerFs::new(dir.path(), 64 << 20).unwrap();
        let synced: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        write(&fs.mount().join("synced"), &synced, true);
        let flushes = fs.disk().stats().flushes;
        write(&fs.mount().join("unsynced"), b"never flushed", false);
        assert!(fs.disk().stats().flushes >= flushes);
        fs.cut();
        fs.restart().unwrap();
        assert_eq!(std::fs::read(fs.mount().join("synced")).unwrap(), synced);
        assert!(
            !fs.mount().join("unsynced").exists(),
            "a write never flushed survived the cut"
        );
        // And the device works after the restart.
        write(&fs.mount().join("after"), b"after", true);
        fs.cut();
        fs.restart().unwrap();
        assert_eq!(std::fs::read(fs.mount().join("after")).unwrap(), b"after");
        drop(fs);
    }
}
