//! Expressions of derived variables (`processing::expr`): lexed, parsed, type-checked against
//! a fixed set of inputs and, when they check, evaluated over a few edge values.
//!
//! Besides "no panic, no hang, no stack overflow": an error names a character position inside
//! the expression (or just past its end), and evaluation returns one value per input element
//! (one value when the expression reads no input).
#![no_main]

use std::collections::BTreeMap;

use cloudify_server::processing::expr::{Col, Ty, check, eval, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let chars = src.chars().count();
    let parsed = match parse(src) {
        Ok(e) => e,
        Err(e) => {
            assert!(e.pos <= chars, "error position {} past the end ({chars})", e.pos);
            assert!(!e.msg.is_empty());
            return;
        }
    };
    let vars: BTreeMap<String, Ty> = [
        ("a".to_string(), Ty::F32),
        ("b".to_string(), Ty::F64),
        ("m".to_string(), Ty::Bool),
    ]
    .into_iter()
    .collect();
    let typed = match check(parsed, &vars) {
        Ok(t) => t,
        Err(e) => {
            assert!(e.pos <= chars, "error position {} past the end ({chars})", e.pos);
            return;
        }
    };
    let a = Col::F32(vec![0.0, -0.0, f32::NAN, f32::INFINITY, -1.5, f32::MIN_POSITIVE / 2.0]);
    let b = Col::F64(vec![1e300, -0.0, f64::NAN, f64::NEG_INFINITY, 3.0, 5e-324]);
    let m = Col::Bool(vec![true, false, true, false, true, false]);
    let inputs: Vec<Col> = typed
        .inputs
        .iter()
        .map(|n| match n.as_str() {
            "a" => a.clone(),
            "b" => b.clone(),
            _ => m.clone(),
        })
        .collect();
    let out = eval(&typed, &inputs);
    let n = cloudify_server::processing::expr::col_len(&out);
    let want = if typed.inputs.is_empty() { 1 } else { 6 };
    assert_eq!(n, want, "result length");
});
