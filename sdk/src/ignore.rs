//! Ignore rules for packaging, in `.gitignore` syntax (a useful subset): `#` comments, `!`
//! re-includes, a trailing `/` matches folders only, a pattern with a `/` inside is anchored at
//! the function folder (else it matches a name at any depth), `*` and `?` stay within one path
//! segment, `**` spans segments. The last matching rule wins; an ignored folder is not entered.

/// Always ignored (before the user's rules, so a `!` rule can bring them back).
pub const DEFAULTS: [&str; 10] = [
    ".git/",
    ".hg/",
    ".svn/",
    "node_modules/.cache/",
    "__pycache__/",
    "*.pyc",
    ".DS_Store",
    ".colorfaasignore",
    "colorfaas.json",
    ".colorfaas/",
];

/// The ignore file's name.
pub const FILE: &str = ".colorfaasignore";

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    negate: bool,
    dir_only: bool,
    anchored: bool,
}

/// An ordered list of rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// The defaults, then each of `sources` (the lines of `.colorfaasignore`, the manifest's
    /// `ignore` list) in order.
    pub fn new<'a>(sources: impl IntoIterator<Item = &'a str>) -> Rules {
        let mut r = Rules::default();
        for line in DEFAULTS.into_iter().chain(sources) {
            r.add(line);
        }
        r
    }

    fn add(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        let (negate, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line.strip_prefix('\\').unwrap_or(line)),
        };
        let (dir_only, line) = match line.strip_suffix('/') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let anchored = line.contains('/');
        let pattern = line.trim_start_matches('/').to_owned();
        if pattern.is_empty() {
            return;
        }
        self.rules.push(Rule {
            pattern,
            negate,
            dir_only,
            anchored,
        });
    }

    /// Whether `rel` (a `/`-separated path inside the function folder) is ignored.
    pub fn ignored(&self, rel: &str, is_dir: bool) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let mut out = false;
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            let text = if r.anchored { rel } else { name };
            if glob(r.pattern.as_bytes(), text.as_bytes()) {
                out = !r.negate;
            }
        }
        out
    }
}

/// Glob matching: `*` and `?` within a segment, `**` across segments, `\x` a literal `x`.
fn glob(p: &[u8], t: &[u8]) -> bool {
    if p.is_empty() {
        return t.is_empty();
    }
    if let Some(rest) = p.strip_prefix(b"**") {
        // `**/` may also stand for no folder at all.
        if let Some(after) = rest.strip_prefix(b"/") {
            if glob(after, t) {
                return true;
            }
        }
        return (0..=t.len()).any(|i| glob(rest, &t[i..]));
    }
    match p[0] {
        b'*' => {
            for i in 0..=t.len() {
                if glob(&p[1..], &t[i..]) {
                    return true;
                }
                if i < t.len() && t[i] == b'/' {
                    break;
                }
            }
            false
        }
        b'?' => !t.is_empty() && t[0] != b'/' && glob(&p[1..], &t[1..]),
        b'\\' if p.len() > 1 => !t.is_empty() && t[0] == p[1] && glob(&p[2..], &t[1..]),
        c => !t.is_empty() && t[0] == c && glob(&p[1..], &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"*.py", b"main.py"));
        assert!(!glob(b"*.py", b"a/main.py"));
        assert!(glob(b"a/**/b", b"a/b"));
        assert!(glob(b"a/**/b", b"a/x/y/b"));
        assert!(glob(b"**/x", b"x"));
        assert!(glob(b"a/**", b"a/b/c"));
        assert!(glob(b"?.js", b"a.js"));
        assert!(!glob(b"?.js", b"ab.js"));
        assert!(glob(b"\\*x", b"*x"));
    }

    #[test]
    fn rules_follow_gitignore() {
        let r = Rules::new([
            "# comment",
            "",
            "*.log",
            "!keep.log",
            "build/",
            "/top.txt",
            "docs/*.md",
        ]);
        assert!(r.ignored("a.log", false));
        assert!(r.ignored("sub/a.log", false));
        assert!(!r.ignored("keep.log", false));
        assert!(r.ignored("build", true));
        assert!(!r.ignored("build", false), "build/ matches folders only");
        assert!(r.ignored("x/build", true));
        assert!(r.ignored("top.txt", false));
        assert!(!r.ignored("sub/top.txt", false), "a leading / anchors");
        assert!(r.ignored("docs/a.md", false));
        assert!(!r.ignored("docs/x/a.md", false));
        assert!(!r.ignored("main.py", false));
    }

    #[test]
    fn defaults_can_be_overridden() {
        let r = Rules::new([]);
        assert!(r.ignored(".git", true));
        assert!(r.ignored("node_modules/.cache", true));
        assert!(!r.ignored("node_modules", true));
        assert!(r.ignored("pkg/__pycache__", true));
        assert!(r.ignored("colorfaas.json", false));
        let r = Rules::new(["!colorfaas.json"]);
        assert!(!r.ignored("colorfaas.json", false));
    }
}
