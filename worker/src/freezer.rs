//! Freezing idle containers with the kernel's cgroup freezer (what `docker pause` uses), written
//! directly: a container's processes — its agent, threads and children a function left
//! running — stop between calls, so nothing computes unbilled, and a freeze or thaw costs one
//! small write instead of a Docker API round trip. The freezer file is found from the agent's
//! pid (`/proc/<pid>/cgroup` and the cgroup mounts of `/proc/self/mountinfo`, cgroup v1 or v2);
//! where the worker cannot reach it (another cgroup namespace, no permission) the caller falls
//! back to Docker's pause and unpause.

use std::path::{Path, PathBuf};

/// One container's freezer control file.
#[derive(Debug, Clone)]
pub struct Freezer {
    file: PathBuf,
    v1: bool,
}

impl Freezer {
    /// The freezer of process `pid`'s cgroup, if this host has one the worker can write.
    pub fn of_pid(pid: u32) -> Option<Freezer> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let (file, v1) = find(&cgroups, &mounts)?;
        let meta = std::fs::metadata(&file).ok()?;
        (!meta.permissions().readonly()).then_some(Freezer { file, v1 })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Stops every process of the cgroup (takes effect within microseconds; a process killed
    /// meanwhile still dies).
    pub fn freeze(&self) -> std::io::Result<()> {
        std::fs::write(&self.file, if self.v1 { "FROZEN" } else { "1" })
    }

    /// Whether the cgroup is frozen now (v1: `FROZEN`, not `FREEZING`; v2: `frozen 1`).
    pub fn is_frozen(&self) -> bool {
        if self.v1 {
            std::fs::read_to_string(&self.file).is_ok_and(|s| s.trim() == "FROZEN")
        } else {
            std::fs::read_to_string(self.file.with_file_name("cgroup.events"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
        }
    }

    /// Lets the cgroup's processes run again.
    pub fn thaw(&self) -> std::io::Result<()> {
        std::fs::write(&self.file, if self.v1 { "THAWED" } else { "0" })
    }
}

/// The freezer file of the cgroup named in a `/proc/<pid>/cgroup` text, given the worker's
/// `/proc/self/mountinfo`; `true` for cgroup v1. v1's freezer controller wins over v2.
fn find(cgroups: &str, mountinfo: &str) -> Option<(PathBuf, bool)> {
    let mut v2 = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "freezer") {
            let dir = mounted(
                mountinfo,
                |fs, opts| fs == "cgroup" && opts.split(',').any(|o| o == "freezer"),
                path,
            )?;
            return Some((dir.join("freezer.state"), true));
        }
        // The root cgroup has no cgroup.freeze: a process there is not in a container.
        if controllers.is_empty() && line.starts_with("0::") && path != "/" {
            v2 = mounted(mountinfo, |fs, _| fs == "cgroup2", path)
                .map(|dir| (dir.join("cgroup.freeze"), false));
        }
    }
    v2
}

/// Where cgroup `path` of the mount that `is` picks appears in this process's file tree.
fn mounted(mountinfo: &str, is: impl Fn(&str, &str) -> bool, path: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fs = fields.get(dash + 1).copied().unwrap_or("");
        let opts = fields.get(dash + 3).copied().unwrap_or("");
        if !is(fs, opts) {
            continue;
        }
        let (root, point) = (*fields.get(3)?, *fields.get(4)?);
        let rel = if root == "/" {
            path
        } else {
            path.strip_prefix(root)?
        };
        return Some(Path::new(point).join(rel.trim_start_matches('/')));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS_V1: &str = "\
27 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
31 27 0:27 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer
32 27 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 27 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw";
    const MOUNTS_V2: &str = "\
25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw,nsdelegate";

    #[test]
    fn finds_the_v1_freezer_before_v2() {
        let cg = "9:name=systemd:/docker/abc\n6:freezer:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc";
        let (f, v1) = find(cg, MOUNTS_V1).unwrap();
        assert_eq!(
            f,
            Path::new("/sys/fs/cgroup/freezer/docker/abc/freezer.state")
        );
        assert!(v1);
    }

    #[test]
    fn finds_the_v2_freeze_file() {
        let cg = "0::/system.slice/docker-abc.scope";
        let (f, v1) = find(cg, MOUNTS_V2).unwrap();
        assert_eq!(
            f,
            Path::new("/sys/fs/cgroup/system.slice/docker-abc.scope/cgroup.freeze")
        );
        assert!(!v1);
        assert!(
            find("0::/", MOUNTS_V2).is_none(),
            "the root cgroup cannot be frozen"
        );
        assert!(find("0::/x", "").is_none(), "no cgroup mount");
    }

    #[test]
    fn a_mount_of_a_sub_tree_is_followed() {
        let mounts = "40 1 0:30 /docker /cg rw - cgroup cgroup rw,freezer";
        let (f, _) = find("6:freezer:/docker/abc", mounts).unwrap();
        assert_eq!(f, Path::new("/cg/abc/freezer.state"));
        assert!(find("6:freezer:/other/abc", mounts).is_none());
    }
}
