//! The wire format between server and worker: `POST /v1/task` with a postcard-encoded
//! [`Request`], answered by a postcard-encoded [`Response`] (partial accumulators are
//! arrays of numbers: a compact binary body, not JSON). Both carry [`VERSION`] (also in
//! the [`VERSION_HEADER`]), and each side refuses the other's version if it differs, with
//! a message naming both: a server and a worker of different releases never exchange
//! tasks whose meaning may have changed.

use serde::{Deserialize, Serialize};

use crate::processing::exec::{Output, Task};

/// The protocol version; bump it whenever [`Request`], [`Response`], [`Task`] or
/// [`Output`] (or what a task computes) changes.
///
/// - 1: a partial holds accumulators for every group of the output block.
/// - 2: a groupby product's locator carries its value-range selection.
/// - 3: a partial holds the groups its rows belong to only
///   ([`crate::processing::reduce::accum::Partial`]); runs are cut where groups change.
/// - 4: a [`Failure`] carries a `Retry-After` (a chunk on tape being recalled).
pub const VERSION: u32 = 4;

/// Header holding the sender's protocol version, readable without decoding the body.
pub const VERSION_HEADER: &str = "x-cloudify-compute-version";

/// Content type of request and response bodies.
pub const CONTENT_TYPE: &str = "application/x-cloudify-compute";

/// The route a worker takes tasks on.
pub const TASK_PATH: &str = "/v1/task";

/// One task for a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The sender's [`VERSION`].
    pub version: u32,
    /// What to compute.
    pub task: Task,
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The worker's [`VERSION`].
    pub version: u32,
    /// The output, or why the task failed there.
    pub result: Result<Output, Failure>,
}

/// A task that failed on the worker for a reason another worker would meet as well (the
/// data cannot be read, the dataset is not configured there): answered, not retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// HTTP status the server answers its client.
    pub status: u16,
    /// What happened.
    pub message: String,
    /// Seconds after which the same task may succeed, for a failure that passes (a 503
    /// while a source file is recalled from tape: the tape driver's estimate). The server
    /// answers its client with it as `Retry-After`; without it a Zarr client would be told
    /// "unavailable" with no hint of when to come back.
    pub retry_after: Option<u64>,
}

/// Encodes a message (infallible for these types; an error is a bug, reported as such).
pub fn encode<T: Serialize>(m: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(m).map_err(|e| format!("cannot encode a compute message: {e}"))
}

/// Encodes a worker's answer into one allocation of [`Response::size_hint`] bytes: growing
/// the buffer of a partial of megabytes by doubling would copy it several times over and,
/// when the allocator hands out fresh pages, fault them in each time. Capacity beyond what
/// is written is never touched, so an upper bound costs nothing.
pub fn encode_response(r: &Response) -> Result<Vec<u8>, String> {
    postcard::to_extend(r, Vec::with_capacity(r.size_hint()))
        .map_err(|e| format!("cannot encode a compute message: {e}"))
}

impl Response {
    /// An upper bound of the encoded size.
    pub fn size_hint(&self) -> usize {
        64 + match &self.result {
            Ok(Output::Bytes(b)) => b.len(),
            Ok(Output::Partial(p)) => p.size_hint(),
            Err(f) => f.message.len(),
        }
    }
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("not a compute protocol message ({e})"))
}

/// The message for a version mismatch, naming both versions.
pub fn mismatch(server: u32, worker: u32) -> String {
    format!(
        "compute protocol version mismatch: the server speaks version {server}, the worker version {worker}; run the same cloudify release for both"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processing::exec::Locator;
    use crate::processing::reduce::accum::{Acc, Partial};
    use cloudify_crds::Reduce;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let req = Request {
            version: VERSION,
            task: Task::Partial {
                at: Locator::Product {
                    parent: "d".into(),
                    var: "tas".into(),
                    coord: "time.month".into(),
                    action: "mean".into(),
                    select: "lat=-30,30&time=2000-01-01,2000-12-31".into(),
                },
                var: "tas".into(),
                start: vec![0, 0],
                count: vec![12, 4],
                slabs: vec![(0, 10), (10, 20)],
            },
        };
        let b = encode(&req).expect("encode");
        assert_eq!(decode::<Request>(&b).expect("decode"), req);
        let mut acc = Acc::new_int(Reduce::Sum, 3);
        acc.add_int(0, &[i128::from(i64::MAX), -1, 7]);
        let resp = Response {
            version: VERSION,
            result: Ok(Output::Partial(Partial { groups: vec![4], acc })),
        };
        let b = encode(&resp).expect("encode");
        assert_eq!(decode::<Response>(&b).expect("decode"), resp);
        assert!(decode::<Response>(b"<html>not a worker</html>").is_err());
        assert!(decode::<Response>(&b[..b.len() / 2]).is_err());
        let m = mismatch(1, 2);
        assert!(m.contains("version 1") && m.contains("version 2"), "{m}");
    }

    /// Every accumulator crosses the wire bit for bit (NaN and -0.0 included, counts of
    /// every width); a truncated or doctored buffer is an error, not a panic.
    #[test]
    fn every_accumulator_round_trips_bit_for_bit() {
        let mut accs: Vec<Acc> = Vec::new();
        for r in Reduce::ALL {
            let mut a = Acc::new(r, 4);
            a.add(0, &[1.5f64, f64::NAN, -0.0, 3e300]);
            a.add(0, &[0.1f64, 7.0, -2.0, f64::NAN]);
            accs.push(a);
            let mut i = Acc::new_int(r, 3);
            i.add_int(0, &[i128::from(i64::MIN), 0, i128::from(u64::MAX)]);
            accs.push(i);
        }
        // counts beyond one byte, two and four
        for n in [300u64, 70_000, 5_000_000_000] {
            accs.push(Acc::Count(vec![0, n, 1]));
        }
        for acc in accs {
            let resp = Response {
                version: VERSION,
                result: Ok(Output::Partial(Partial {
                    groups: vec![0, 2],
                    acc,
                })),
            };
            let b = encode(&resp).expect("encode");
            let back: Response = decode(&b).expect("decode");
            assert_eq!(format!("{back:?}"), format!("{resp:?}"));
            for cut in [1, b.len() / 2, b.len() - 1] {
                assert!(decode::<Response>(&b[..cut]).is_err(), "{cut} of {}", b.len());
            }
        }
        // a median's value lists whose lengths do not add up
        let mut a = Acc::new(Reduce::Median, 2);
        a.add(0, &[1.0f64, 2.0]);
        let mut b = encode(&a).expect("encode");
        let at = b.len() - 16 - 2; // the lengths [1, 1] precede the two values
        b[at] = 5;
        assert!(decode::<Acc>(&b).is_err());
    }

    /// Version 1 sent whole-block partials; a server or worker of that release must be
    /// refused by version, not misread.
    #[test]
    fn partials_of_some_groups_are_a_new_version() {
        const { assert!(VERSION >= 2) };
        let m = mismatch(VERSION, 1);
        assert!(
            m.contains(&format!("server speaks version {VERSION}")) && m.contains("worker version 1"),
            "{m}"
        );
    }
}
