//! containerd's `imports` entries are paths or patterns for Go's filepath.Glob: `*` any run of
//! characters but '/', `?` one such character, `[...]` a class (ranges, `^` to negate), `\`
//! escapes. Matching goes one path component at a time, so no pattern crosses a '/'.

/// Whether `path` matches the pattern `pattern` (both absolute or both relative).
pub fn matches(pattern: &str, path: &str) -> bool {
    if pattern.starts_with('/') != path.starts_with('/') {
        return false;
    }
    let components =
        |s: &str| s.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect::<Vec<_>>();
    let (pattern, path) = (components(pattern), components(path));
    pattern.len() == path.len()
        && pattern.iter().zip(&path).all(|(p, s)| {
            let (p, s): (Vec<char>, Vec<char>) = (p.chars().collect(), s.chars().collect());
            component(&p, &s)
        })
}

/// One component: `p` against `s`, neither holding '/'.
fn component(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).any(|skip| component(&p[1..], &s[skip..])),
        Some('?') => !s.is_empty() && component(&p[1..], &s[1..]),
        Some('[') => match (class(&p[1..]), s.first()) {
            (Some((matched, rest)), Some(&c)) => matched(c) && component(rest, &s[1..]),
            // A malformed class matches nothing (Go reports ErrBadPattern).
            _ => false,
        },
        Some('\\') => p.len() > 1 && s.first() == Some(&p[1]) && component(&p[2..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && component(&p[1..], &s[1..]),
    }
}

/// A class after its '[': a test for one character and the pattern after the ']'.
fn class(p: &[char]) -> Option<(impl Fn(char) -> bool, &[char])> {
    let (negated, mut i) = if p.first() == Some(&'^') { (true, 1) } else { (false, 0) };
    let mut ranges = Vec::new();
    let take = |i: &mut usize| -> Option<char> {
        let c = *p.get(*i)?;
        *i += 1;
        if c == '\\' {
            let e = *p.get(*i)?;
            *i += 1;
            return Some(e);
        }
        Some(c)
    };
    loop {
        match p.get(i) {
            None => return None,
            Some(']') if !ranges.is_empty() => break,
            _ => {}
        }
        let lo = take(&mut i)?;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            take(&mut i)?
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
    Some((move |c: char| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negated, &p[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_matches_within_one_component() {
        assert!(matches("/etc/containerd/conf.d/*.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(matches("/etc/containerd/conf.d/*", "/etc/containerd/conf.d/podnet.toml"));
        assert!(!matches("/etc/containerd/*.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(!matches("/etc/containerd/conf.d/*.conf", "/etc/containerd/conf.d/podnet.toml"));
        assert!(matches("/etc/containerd/*/podnet.toml", "/etc/containerd/conf.d/podnet.toml"));
    }

    #[test]
    fn literal_question_mark_and_classes() {
        assert!(matches("/etc/containerd/conf.d/podnet.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(matches("/etc//containerd/./conf.d/podnet.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(matches("/etc/containerd/conf.d/podne?.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(matches("/etc/containerd/conf.d/[a-q]odnet.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(!matches("/etc/containerd/conf.d/[^p]odnet.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(matches("/etc/containerd/conf.d/\\podnet.toml", "/etc/containerd/conf.d/podnet.toml"));
        assert!(!matches("/etc/containerd/conf.d/[p", "/etc/containerd/conf.d/p"));
        assert!(!matches("conf.d/podnet.toml", "/conf.d/podnet.toml"));
    }
}
