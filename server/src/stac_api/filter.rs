//! CQL2 filters of searches: compiled from request input with bounded nesting, checked for
//! operators and argument counts this catalog can evaluate, then evaluated per item.
//!
//! Why the bounds: the `cql2` crate parses, normalises, evaluates, renders and drops
//! expressions recursively, so a filter nested a few hundred levels deep
//! (`((((…1=1…))))`, `NOT NOT … id='x'`, `1=1=1=…`, `1-1-1-…`) used to overflow the stack of
//! the worker thread and abort the whole process on one unauthenticated request. Every
//! filter, cql2-text or cql2-json, is therefore
//!
//! 1. for cql2-text, scanned without recursion first: parentheses nested at most
//!    [`MAX_FILTER_DEPTH`] deep and at most [`MAX_FILTER_OPERATORS`] operator tokens, which
//!    bounds every recursion of the parser (cql2-json is bounded by serde_json's 128 levels);
//! 2. parsed, checked and (when refused) dropped on a stack of its own ([`FILTER_STACK`]),
//!    sized for the deepest tree those bounds allow, so that the caller's stack does not
//!    matter;
//! 3. accepted only when the expression tree is at most [`MAX_FILTER_DEPTH`] levels deep — the
//!    same limit for both encodings — so evaluating, cloning, rendering (paging links) and
//!    dropping it later, on any thread, recurse at most that deep.

use serde_json::Value;
use stac::api::Filter;

/// Deepest accepted filter: levels of the expression tree (an operation, its operands, their
/// operands, ...) and, in cql2-text, of parentheses. Hand-written and generated filters stay
/// far below it (`a = 1 AND (b < 2 OR NOT c LIKE 'x%')` is 4 deep; `AND`/`OR` chains count as
/// one level); cql2-json cannot even express much more than twice as deep within serde_json's
/// limit of 128 nested JSON values.
pub const MAX_FILTER_DEPTH: usize = 32;

/// Most operator tokens (`AND`, `NOT`, `=`, `-`, ...) in a cql2-text filter. The parser
/// recurses once per operator of a chain before the tree is flattened and measured (2-4 KiB of
/// stack per level in a release build), so this bounds its stack use. Long lists of values
/// belong in `IN (...)`, which is one operator. Signs of numbers count when they follow a
/// value (`POLYGON((-10 -20, ...))` counts one per negative latitude): large geometries belong
/// in the search's `intersects` parameter.
pub const MAX_FILTER_OPERATORS: usize = 1024;

/// Stack on which a filter is parsed and checked: [`MAX_FILTER_OPERATORS`] levels of the
/// parser's recursion need 2-4 MiB in a release build (4096 levels overflowed 8 MiB), several
/// times that unoptimised. Memory is mapped for the call and only the pages used are touched.
pub const FILTER_STACK: usize = 32 << 20;

/// Why a filter was refused; the message names the problem (it is answered with 400).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    /// cql2-text parentheses deeper than [`MAX_FILTER_DEPTH`], found before parsing.
    #[error(
        "filter: parentheses nested more than {MAX_FILTER_DEPTH} levels deep (at byte {at}); \
         {MAX_FILTER_DEPTH} are accepted"
    )]
    TextTooDeep {
        /// Byte offset of the first parenthesis too deep, to find it in a generated filter.
        at: usize,
    },
    /// cql2-text with more than [`MAX_FILTER_OPERATORS`] operators, found before parsing.
    #[error(
        "filter: more than {MAX_FILTER_OPERATORS} operators; at most {MAX_FILTER_OPERATORS} are \
         accepted (long lists of values go in IN (...), large geometries in the intersects parameter)"
    )]
    TooManyOperators,
    /// An expression tree deeper than [`MAX_FILTER_DEPTH`] (either encoding).
    #[error("filter: nested more than {MAX_FILTER_DEPTH} levels deep; {MAX_FILTER_DEPTH} are accepted")]
    TooDeep,
    /// cql2-text that does not parse; the parser's message says where.
    #[error("filter: {0}")]
    Syntax(String),
    /// cql2-json that is not a CQL2 expression.
    #[error("filter: invalid cql2-json: {0}")]
    Json(String),
    /// A function or operator `cql2` cannot evaluate: without this every item would silently
    /// "not match".
    #[error(
        "filter: unknown function '{0}' (this catalog defines no functions; the CQL2 operators \
         are and, or, not, comparisons, like, between, in, isNull, casei, accenti, arithmetic, \
         s_*, t_* and a_*)"
    )]
    UnknownFunction(String),
    /// An operator or function with the wrong number of arguments.
    #[error("filter: '{op}' takes {expected}, not {actual} argument(s)")]
    Arity {
        /// The operator or function as the filter names it.
        op: String,
        /// The accepted count, in words ("2 arguments", "4 or 6 arguments").
        expected: &'static str,
        /// The count given.
        actual: usize,
    },
}

/// Compiles a search's CQL2 filter (text or JSON) into an expression that is safe to evaluate.
pub fn compile_filter(f: &Filter) -> Result<cql2::Expr, FilterError> {
    if let Filter::Cql2Text(t) = f {
        scan_text(t)?;
    }
    stacker::grow(FILTER_STACK, || {
        let e = match f {
            Filter::Cql2Text(t) => cql2::parse_text(t).map_err(|e| FilterError::Syntax(e.to_string()))?,
            Filter::Cql2Json(m) => serde_json::from_value(Value::Object(m.clone()))
                .map_err(|e| FilterError::Json(e.to_string()))?,
        };
        // A refused tree may be deep: it is dropped here, on this stack.
        check(&e)?;
        Ok(e)
    })
}

/// Evaluates a compiled filter on one item (as JSON).
///
/// CQL2 has three-valued logic: a property the item does not have is NULL, a comparison with
/// NULL is unknown, and an item is returned only when the filter is TRUE. cql2 reports such a
/// predicate as "could not reduce"; that, or any other evaluation failure on one item (a
/// property whose type differs from the literal's), is "no match" for that item, not an error
/// of the whole search: the filter itself was parsed and checked before the search ran.
pub fn filter_matches(filter: &cql2::Expr, item: &Value) -> bool {
    match filter.clone().matches(Some(item)) {
        Ok(m) => m,
        Err(e) => {
            tracing::trace!("filter is not true for item: {e}");
            false
        }
    }
}

/// The one-argument functions whose extra arguments `cql2`'s text parser drops without a word
/// (`DATE('2001-01-01', 'junk')` is parsed as `DATE('2001-01-01')`), by the name a message
/// gives them: the spelling of the CQL2 standard.
fn single_argument(word: &[u8]) -> Option<&'static str> {
    ["DATE", "TIMESTAMP"]
        .into_iter()
        .find(|f| f.as_bytes().eq_ignore_ascii_case(word))
}

/// Bounds the recursion of parsing cql2-text, without recursing: the nesting of parentheses
/// and the number of operator tokens (an over-estimate of the operators the parser sees:
/// quoted strings and identifiers are skipped, a sign directly before a digit counts unless it
/// follows a value). Also counts the arguments of `DATE(...)` and `TIMESTAMP(...)`, which the
/// parsed tree no longer shows (see [`single_argument`]).
fn scan_text(t: &str) -> Result<(), FilterError> {
    let b = t.as_bytes();
    let (mut depth, mut ops) = (0usize, 0usize);
    // whether the previous token was a value (so that a following `-` is a binary operator)
    let mut after_value = false;
    // a DATE/TIMESTAMP name just read, waiting for its `(` (whitespace may come between)
    let mut pending: Option<&'static str> = None;
    // one entry per open parenthesis: the single-argument function it calls, if any, with the
    // commas seen at its own level (at most MAX_FILTER_DEPTH entries)
    let mut open: Vec<Option<(&'static str, usize)>> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let call = pending;
        if !c.is_ascii_whitespace() {
            pending = None;
        }
        match c {
            b'\'' | b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                // a double-quoted identifier may name a function too
                if c == b'"' {
                    pending = single_argument(&b[start..i.min(b.len())]);
                }
                after_value = true;
            }
            b'(' => {
                depth += 1;
                if depth > MAX_FILTER_DEPTH {
                    return Err(FilterError::TextTooDeep { at: i });
                }
                open.push(call.map(|f| (f, 0)));
                after_value = false;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                if let Some(Some((f, commas))) = open.pop()
                    && commas > 0
                {
                    return Err(FilterError::Arity {
                        op: f.to_string(),
                        expected: "1 argument",
                        actual: commas + 1,
                    });
                }
                after_value = true;
            }
            b',' => {
                if let Some(Some((_, commas))) = open.last_mut() {
                    *commas += 1;
                }
                after_value = false;
            }
            b'0'..=b'9' | b'.' => {
                while i + 1 < b.len() && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'.') {
                    i += 1;
                }
                after_value = true;
            }
            b'+' | b'-' if !after_value && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // the sign of a number, not an operator
            }
            b'=' | b'<' | b'>' | b'!' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' => {
                ops += 1;
                after_value = false;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i + 1 < b.len()
                    && (b[i + 1].is_ascii_alphanumeric()
                        || matches!(b[i + 1], b'_' | b'.' | b':')
                        || b[i + 1] >= 0x80)
                {
                    i += 1;
                }
                let word = &b[start..=i];
                let is_op = ["and", "or", "not", "like", "in", "between", "is", "div"]
                    .iter()
                    .any(|k| k.as_bytes().eq_ignore_ascii_case(word));
                if is_op {
                    ops += 1;
                }
                pending = single_argument(word);
                after_value = !is_op;
            }
            _ => {}
        }
        if ops > MAX_FILTER_OPERATORS {
            return Err(FilterError::TooManyOperators);
        }
        i += 1;
    }
    Ok(())
}

/// Argument counts of the CQL2 operators `cql2` evaluates: `(min, max, spelled)`.
fn arity(op: &str) -> Option<(usize, usize, &'static str)> {
    const ONE: (usize, usize, &str) = (1, 1, "1 argument");
    const TWO: (usize, usize, &str) = (2, 2, "2 arguments");
    const CHAIN: (usize, usize, &str) = (2, usize::MAX, "2 or more arguments");
    Some(match op {
        "and" | "or" => CHAIN,
        "not" | "isNull" | "casei" | "accenti" => ONE,
        "between" => (3, 3, "3 arguments"),
        // `+ - * / %` chain in cql2-json (`{"op": "+", "args": [a, b, c]}`)
        "+" | "-" | "*" | "/" | "%" => CHAIN,
        "^" | "div" | "=" | "<>" | "<" | "<=" | ">" | ">=" | "like" | "in" => TWO,
        _ if cql2::SPATIALOPS.contains(&op)
            || cql2::TEMPORALOPS.contains(&op)
            || cql2::ARRAYOPS.contains(&op) =>
        {
            TWO
        }
        _ => return None,
    })
}

/// Checks a parsed filter without recursing: at most [`MAX_FILTER_DEPTH`] levels, only
/// operators this catalog evaluates, each with its number of arguments. An unknown function
/// or a wrong count would otherwise only make every item "not match" (200, no results).
fn check(e: &cql2::Expr) -> Result<(), FilterError> {
    use cql2::Expr as E;
    let mut todo = vec![(e, 1usize)];
    while let Some((e, depth)) = todo.pop() {
        if depth > MAX_FILTER_DEPTH {
            return Err(FilterError::TooDeep);
        }
        let wrong = |op: &str, expected, actual| FilterError::Arity {
            op: op.to_string(),
            expected,
            actual,
        };
        let children: &[Box<E>] = match e {
            E::Operation { op, args } => {
                let (min, max, spelled) =
                    arity(op).ok_or_else(|| FilterError::UnknownFunction(op.clone()))?;
                if args.len() < min || args.len() > max {
                    return Err(wrong(op, spelled, args.len()));
                }
                args
            }
            E::Interval { interval } => {
                if interval.len() != 2 {
                    return Err(wrong("interval", "2 arguments", interval.len()));
                }
                interval
            }
            E::BBox { bbox } => {
                if bbox.len() != 4 && bbox.len() != 6 {
                    return Err(wrong("bbox", "4 or 6 arguments", bbox.len()));
                }
                bbox
            }
            E::Array(items) => items,
            E::Date { date: x } | E::Timestamp { timestamp: x } => std::slice::from_ref(x),
            E::Property { .. } | E::Float(_) | E::Literal(_) | E::Bool(_) | E::Geometry(_) | E::Null => &[],
        };
        todo.extend(children.iter().map(|c| (c.as_ref(), depth + 1)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(s: &str) -> Result<cql2::Expr, FilterError> {
        compile_filter(&Filter::Cql2Text(s.to_string()))
    }

    fn cjson(v: Value) -> Result<cql2::Expr, FilterError> {
        let Value::Object(m) = v else {
            panic!("not an object")
        };
        compile_filter(&Filter::Cql2Json(m))
    }

    /// `n` levels of `op(...)` around `inner`, as cql2-json.
    fn nest_json(n: usize, inner: Value, wrap: impl Fn(Value) -> Value) -> Value {
        (0..n).fold(inner, |acc, _| wrap(acc))
    }

    #[test]
    fn ordinary_filters_compile() {
        for f in [
            "cloud < 60",
            "NOT (cloud < 60)",
            "model = 'MPI-ESM' AND cloud > 10 OR x IS NULL",
            "cloud BETWEEN 1 AND 2",
            "id IN ('a', 'b', 'c')",
            "casei(model) LIKE 'mpi%'",
            "datetime >= TIMESTAMP('2002-01-01T00:00:00Z')",
            "t_intersects(datetime, INTERVAL('2000-01-01', '2001-01-01'))",
            "s_intersects(geometry, POLYGON((-10 -20, -10 20, 10 20, 10 -20, -10 -20)))",
            "s_intersects(geometry, BBOX(-10, -20, 10, 20))",
            "a_contains(tags, ('x', 'y'))",
            "cloud + 1 - 2 * 3 / 4 % 5 > -1 AND 2 ^ 3 = 8 AND 7 div 2 = 3",
            "x = -5 AND y = - 5",
        ] {
            text(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        // exactly at the limit: 30 NOTs, the comparison and its operands are 32 levels
        let f = format!("{}id = 'x'", "NOT ".repeat(MAX_FILTER_DEPTH - 2));
        text(&f).unwrap_or_else(|e| panic!("{e}"));
        let f = format!("{}id = 'x'", "NOT ".repeat(MAX_FILTER_DEPTH - 1));
        assert_eq!(text(&f).unwrap_err(), FilterError::TooDeep);
        // long AND/OR chains are flattened, a long IN list is one operator
        let f = (0..500)
            .map(|i| format!("id = 'i{i}'"))
            .collect::<Vec<_>>()
            .join(" OR ");
        text(&f).unwrap_or_else(|e| panic!("{e}"));
        let list = (0..20_000)
            .map(|i| format!("'i{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        text(&format!("id IN ({list})")).unwrap_or_else(|e| panic!("{e}"));
        // a detailed polygon with negative coordinates
        let ring = (0..400)
            .map(|i| format!("-{i}.5 -{i}.25"))
            .chain(["-0.5 -0.25".to_string()])
            .collect::<Vec<_>>()
            .join(", ");
        text(&format!("s_intersects(geometry, POLYGON(({ring})))")).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The inputs of issue #20 and their relatives, 600 to 100,000 levels deep: refused with a
    /// message, never a stack overflow — here on a thread with a stack smaller than tokio's.
    #[test]
    fn deep_filters_are_refused_not_overflowing() {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                for n in [600, 5_000, 100_000] {
                    let cases = [
                        format!("{}1=1{}", "(".repeat(n), ")".repeat(n)),
                        format!("{}id='x'", "NOT ".repeat(n)),
                        format!("{}1{} = 1", "-(".repeat(n), ")".repeat(n)),
                        format!("{}1{} = 1", "f(".repeat(n), ")".repeat(n)),
                        format!("x IN {}1{}", "(".repeat(n), ")".repeat(n)),
                        format!("1{} = 1", "=1".repeat(n)),
                        format!("1{} = 1", "-1".repeat(n)),
                        format!("1{} = 1", " + 1".repeat(n)),
                        format!("s_intersects(g, POLYGON(1{}))", "-1".repeat(n)),
                    ];
                    for f in cases {
                        let e = text(&f).expect_err(&f[..40.min(f.len())]);
                        assert!(
                            matches!(
                                e,
                                FilterError::TextTooDeep { .. }
                                    | FilterError::TooManyOperators
                                    | FilterError::TooDeep
                                    // `POLYGON(1-1-…)` is not WKT: a call of an unknown function
                                    | FilterError::UnknownFunction(_)
                            ),
                            "{}: {e}",
                            &f[..40]
                        );
                        assert!(e.to_string().starts_with("filter: "), "{e}");
                    }
                }
                // just below the operator limit: parsed on the filter stack, then refused as
                // too deep (a left-deep chain of 4000 subtractions)
                let f = format!("1{} = 1", "-1".repeat(MAX_FILTER_OPERATORS - 2));
                assert_eq!(text(&f).unwrap_err(), FilterError::TooDeep);
                let f = format!("1{} = 1", "=1".repeat(MAX_FILTER_OPERATORS - 2));
                assert_eq!(text(&f).unwrap_err(), FilterError::TooDeep);
                let f = format!("{}id='x'", "NOT ".repeat(MAX_FILTER_OPERATORS - 2));
                assert_eq!(text(&f).unwrap_err(), FilterError::TooDeep);
                // ...and a flat chain that long is fine, as are signs that fold into a number
                let f = format!("x{}", " AND x".repeat(MAX_FILTER_OPERATORS - 1));
                text(&f).unwrap_or_else(|e| panic!("{e}"));
                let f = format!("x = {}1", "- ".repeat(MAX_FILTER_OPERATORS - 2));
                text(&f).unwrap_or_else(|e| panic!("{e}"));
                let f = format!("x = {}1", "- ".repeat(MAX_FILTER_OPERATORS + 1));
                assert_eq!(text(&f).unwrap_err(), FilterError::TooManyOperators);
            })
            .expect("thread")
            .join()
            .expect("no overflow");
    }

    #[test]
    fn cql2_json_has_the_same_depth_limit() {
        let not = |v: Value| json!({"op": "not", "args": [v]});
        let leaf = json!({"op": "=", "args": [{"property": "id"}, "x"]});
        cjson(nest_json(MAX_FILTER_DEPTH - 2, leaf.clone(), not)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cjson(nest_json(MAX_FILTER_DEPTH - 1, leaf.clone(), not)).unwrap_err(),
            FilterError::TooDeep
        );
        // deep arrays and arithmetic
        let arr = nest_json(MAX_FILTER_DEPTH, json!(1), |v| json!([v]));
        let e = cjson(json!({"op": "in", "args": [{"property": "x"}, arr]})).unwrap_err();
        assert_eq!(e, FilterError::TooDeep);
        let plus = nest_json(MAX_FILTER_DEPTH, json!(1), |v| json!({"op": "+", "args": [v, 1]}));
        let e = cjson(json!({"op": "=", "args": [plus, 1]})).unwrap_err();
        assert_eq!(e, FilterError::TooDeep);
    }

    #[test]
    fn unknown_functions_and_argument_counts_are_refused() {
        for (f, want) in [
            ("nosuchfn(cloud) = 1", "unknown function 'nosuchfn'"),
            (
                "s_intersects(geometry)",
                "'s_intersects' takes 2 arguments, not 1",
            ),
            (
                "t_before(datetime, '2000-01-01', '2001-01-01')",
                "'t_before' takes 2 arguments, not 3",
            ),
            ("casei(a, b) = 'x'", "'casei' takes 1 argument, not 2"),
            // cql2's parser keeps the first argument of these and drops the rest
            (
                "datetime > DATE('2000-01-01', '2999-01-01')",
                "'DATE' takes 1 argument, not 2",
            ),
            (
                "datetime < timestamp ('2000-01-01T00:00:00Z', 'x', 'y')",
                "'TIMESTAMP' takes 1 argument, not 3",
            ),
            (
                "t_after(datetime, \"Date\"(('2000-01-01'), 1))",
                "'DATE' takes 1 argument, not 2",
            ),
            (
                "t_intersects(datetime, INTERVAL('2000-01-01'))",
                "'interval' takes 2 arguments, not 1",
            ),
            (
                "s_intersects(geometry, BBOX(1, 2, 3))",
                "'bbox' takes 4 or 6 arguments, not 3",
            ),
        ] {
            let e = text(f).expect_err(f).to_string();
            assert!(e.contains(want), "{f}: {e}");
        }
        for (v, want) in [
            (
                json!({"op": "frobnicate", "args": [1]}),
                "unknown function 'frobnicate'",
            ),
            (
                json!({"op": "=", "args": [1, 2, 3]}),
                "'=' takes 2 arguments, not 3",
            ),
            (json!({"op": "not", "args": []}), "'not' takes 1 argument, not 0"),
            (
                json!({"op": "and", "args": [true]}),
                "'and' takes 2 or more arguments, not 1",
            ),
            (
                json!({"op": "between", "args": [{"property": "x"}, 1]}),
                "'between' takes 3 arguments, not 2",
            ),
        ] {
            let e = cjson(v.clone()).expect_err(&v.to_string()).to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    /// The argument count of DATE/TIMESTAMP is read from the text: commas in strings, in
    /// nested calls or after the call do not count.
    #[test]
    fn date_and_timestamp_with_one_argument_compile() {
        for f in [
            "datetime > DATE('2000-01-01')",
            "datetime > TIMESTAMP('2000-01-01T00:00:00Z') AND id IN ('a', 'b')",
            "t_intersects(datetime, INTERVAL(DATE('2000-01-01'), DATE('2001-01-01')))",
            "date = 'a, b' AND datetime > date('2000-01-01')",
            "id IN ('DATE', 'x') AND s_intersects(geometry, BBOX(1, 2, 3, 4))",
        ] {
            text(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn compiled_filters_evaluate() {
        let item = json!({"id": "a", "properties": {"cloud": 10, "model": "MPI-ESM"}});
        let t = |f: &str| filter_matches(&text(f).expect(f), &item);
        assert!(t("cloud < 60 AND casei(model) = 'mpi-esm'"));
        assert!(!t("NOT (cloud < 60)"));
        assert!(!t("missing = 1"));
    }
}
