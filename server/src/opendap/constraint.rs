//! DAP2 constraint expressions: the projection part (`a,b.c[0:2:10][3]`), parsed into typed
//! selections. Selection clauses (`&x>3`) and server functions are refused: nothing in a
//! request is evaluated.

use super::DapError;

/// One hyperslab along a dimension: `start`, `stride`, `stop` (inclusive, as DAP2 defines
/// `[start:stride:stop]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// First index.
    pub start: u64,
    /// Step between indices (never 0).
    pub stride: u64,
    /// Last index that may be selected (inclusive).
    pub stop: u64,
}

impl Slice {
    /// The whole of a dimension of length `n` (`n > 0`).
    pub fn all(n: u64) -> Self {
        Slice {
            start: 0,
            stride: 1,
            stop: n.saturating_sub(1),
        }
    }

    /// Number of indices selected.
    pub fn count(&self) -> u64 {
        (self.stop - self.start) / self.stride + 1
    }
}

/// One projected name: a variable, or `grid.member`, with the hyperslabs written after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Projection {
    /// Variable (top-level) name.
    pub var: String,
    /// Member of a Grid (`tas.lat`), if named.
    pub member: Option<String>,
    /// Hyperslabs as written (`[i]` is `i:1:i`); empty means the whole variable.
    pub slices: Vec<Slice>,
}

/// Decodes `%XX` escapes (clients escape `[`, `]`, `:` and `,` differently).
pub fn percent_decode(s: &str) -> Result<String, DapError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| DapError::bad(format!("malformed percent escape in constraint '{s}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DapError::bad("constraint is not UTF-8 after percent-decoding"))
}

/// Parses a (percent-decoded) constraint expression into projections, in order. An empty
/// projection means every variable.
pub fn parse(ce: &str) -> Result<Vec<Projection>, DapError> {
    let (proj, selection) = match ce.find('&') {
        Some(i) => (&ce[..i], &ce[i + 1..]),
        None => (ce, ""),
    };
    if !selection.trim().is_empty() {
        return Err(DapError::bad(format!(
            "selection clauses are not supported (only projections and hyperslabs): '&{selection}'"
        )));
    }
    let mut out = Vec::new();
    if proj.trim().is_empty() {
        return Ok(out);
    }
    for item in split_top(proj) {
        out.push(parse_item(item.trim())?);
    }
    Ok(out)
}

/// Splits at commas outside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// `name(.member)?([..])*`, hyperslabs allowed after the name or the member (last wins).
fn parse_item(item: &str) -> Result<Projection, DapError> {
    if item.is_empty() {
        return Err(DapError::bad("empty name in constraint (two commas in a row?)"));
    }
    let mut names = Vec::new();
    let mut slices = Vec::new();
    let mut rest = item;
    loop {
        let end = rest.find(['[', '.']).unwrap_or(rest.len());
        let name = &rest[..end];
        if name.is_empty() || name.contains(['(', ')', '=', '<', '>', '{', '}', '"', ']']) {
            return Err(DapError::bad(format!(
                "malformed constraint item '{item}' (expected name, name.member, name[start:stride:stop])"
            )));
        }
        names.push(name.to_string());
        rest = &rest[end..];
        let mut these = Vec::new();
        while let Some(r) = rest.strip_prefix('[') {
            let close = r
                .find(']')
                .ok_or_else(|| DapError::bad(format!("unclosed '[' in constraint item '{item}'")))?;
            these.push(parse_slice(&r[..close], item)?);
            rest = &r[close + 1..];
        }
        if !these.is_empty() {
            slices = these;
        }
        if rest.is_empty() {
            break;
        }
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => {
                return Err(DapError::bad(format!(
                    "malformed constraint item '{item}' near '{rest}'"
                )));
            }
        }
    }
    if names.len() > 2 {
        return Err(DapError::bad(format!(
            "'{item}' names more than Grid.member: DAP2 datasets here are flat"
        )));
    }
    let member = names.get(1).cloned();
    let var = names.swap_remove(0);
    Ok(Projection { var, member, slices })
}

/// `i`, `a:b` or `a:s:b`.
fn parse_slice(s: &str, item: &str) -> Result<Slice, DapError> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| DapError::bad(format!("bad index '{t}' in hyperslab [{s}] of '{item}'")))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (start, stride, stop) = match parts.as_slice() {
        [i] => (num(i)?, 1, num(i)?),
        [a, b] => (num(a)?, 1, num(b)?),
        [a, st, b] => (num(a)?, num(st)?, num(b)?),
        _ => return Err(DapError::bad(format!("malformed hyperslab [{s}] in '{item}'"))),
    };
    if stride == 0 {
        return Err(DapError::bad(format!("stride 0 in hyperslab [{s}] of '{item}'")));
    }
    if stop < start {
        return Err(DapError::bad(format!(
            "hyperslab [{s}] of '{item}' stops ({stop}) before it starts ({start})"
        )));
    }
    Ok(Slice { start, stride, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_projections_members_and_strided_hyperslabs() {
        let p = parse("tas.tas[0:2:10][3][1:4],lat").expect("valid");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].var, "tas");
        assert_eq!(p[0].member.as_deref(), Some("tas"));
        assert_eq!(
            p[0].slices,
            vec![
                Slice {
                    start: 0,
                    stride: 2,
                    stop: 10
                },
                Slice {
                    start: 3,
                    stride: 1,
                    stop: 3
                },
                Slice {
                    start: 1,
                    stride: 1,
                    stop: 4
                }
            ]
        );
        // start:STRIDE:stop, inclusive stop: 0,2,4,6,8,10.
        assert_eq!(p[0].slices[0].count(), 6);
        assert_eq!(
            p[1],
            Projection {
                var: "lat".into(),
                member: None,
                slices: vec![]
            }
        );
        assert!(parse("").expect("empty").is_empty());
        let d = percent_decode("tas%5B0%3A1%3A2%5D%2Clat").expect("decode");
        assert_eq!(d, "tas[0:1:2],lat");
    }

    #[test]
    fn refuses_malformed_constraints() {
        for bad in [
            "tas[0:0:3]",
            "tas[3:1]",
            "tas[a]",
            "tas[1",
            "tas,,lat",
            "a.b.c",
            "f(x)",
            "tas&tas>3",
            "tas[1:2:3:4]",
            "tas]x",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(percent_decode("%zz").is_err());
    }

    /// The parser is iterative (no recursion on brackets, members or items), so nesting as
    /// deep as a request line allows is a 400 naming the problem, never a stack overflow;
    /// the HTTP layer caps the request target at 8 KiB anyway, these go far beyond.
    #[test]
    fn deep_nesting_is_a_400_not_a_stack_overflow() {
        let n = 100_000;
        for (bad, words) in [
            (format!("tas{}0{}", "[".repeat(n), "]".repeat(n)), "bad index"),
            (
                format!("{}tas{}", "(".repeat(n), ")".repeat(n)),
                "malformed constraint item",
            ),
            (format!("tas{}", ".a".repeat(n)), "more than Grid.member"),
            (format!("tas{}", "[".repeat(n)), "unclosed"),
            (format!("tas{}", "]".repeat(n)), "malformed constraint item"),
            (format!("{}tas", ",".repeat(n)), "empty name"),
        ] {
            let e = parse(&bad).expect_err("refused");
            assert_eq!(e.status, 400, "{}", e.message);
            assert!(
                e.message.contains(words),
                "{words}: {}",
                &e.message[..e.message.len().min(200)]
            );
        }
        let escaped = format!("tas{}0{}", "%5B".repeat(n), "%5D".repeat(n));
        let e = parse(&percent_decode(&escaped).expect("decodes")).expect_err("refused");
        assert_eq!(e.status, 400);
        // Many hyperslabs on one name parse (resolving them against the variable's rank is
        // what refuses them).
        let many = format!("tas{}", "[0]".repeat(n));
        assert_eq!(parse(&many).expect("parses")[0].slices.len(), n);
    }
}
