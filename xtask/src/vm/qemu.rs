//! One qemu guest: a kernel, a console written to a file, 9p shares and disks,
//! and a hard deadline after which it is killed.

use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Qemu {
    args: Vec<OsString>,
}

/// KVM where it can run stock kernels; software emulation otherwise. Nested
/// "PVM" KVM (a `kvm_pvm` module) runs only specially built guest kernels.
pub fn accelerator() -> (&'static str, &'static str) {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
        && !Path::new("/sys/module/kvm_pvm").exists();
    if kvm {
        ("kvm", "host")
    } else {
        ("tcg,thread=multi", "max")
    }
}

impl Qemu {
    pub fn new(kernel: &Path, initrd: &Path, append: &str, memory_mib: u32) -> Self {
        let (accel, cpu) = accelerator();
        let mut args: Vec<OsString> = Vec::new();
        for a in [
            "-machine",
            "q35",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ] {
            args.push(a.into());
        }
        args.extend(["-m".into(), memory_mib.to_string().into()]);
        args.extend(["-kernel".into(), kernel.into()]);
        args.extend(["-initrd".into(), initrd.into()]);
        args.extend(["-append".into(), append.into()]);
        Qemu { args }
    }

    /// A 9p share the guest mounts by `tag`.
    pub fn share(mut self, tag: &str, path: &Path, readonly: bool) -> Self {
        let mut spec = OsString::from("local,security_model=none,multidevs=remap,path=");
        spec.push(path);
        spec.push(format!(",mount_tag={tag}"));
        if readonly {
            spec.push(",readonly=on");
        }
        self.args.extend(["-virtfs".into(), spec]);
        self
    }

    /// A raw disk image on virtio-blk (`/dev/vda`, `/dev/vdb`, ... in order).
    pub fn disk(mut self, path: &Path) -> Self {
        let mut spec = OsString::from("format=raw,if=virtio,file=");
        spec.push(path);
        self.args.extend(["-drive".into(), spec]);
        self
    }

    /// Boots, writes the serial console to `console`, and returns once the
    /// guest powers off; kills it after `deadline`.
    pub fn run(self, console: &Path, deadline: Duration) -> Result<Duration> {
        let log = std::fs::File::create(console)?;
        let start = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("qemu exited with {status}; console: {}", console.display());
                }
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the guest did not power off within {}s; console: {}",
                    deadline.as_secs(),
                    console.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
