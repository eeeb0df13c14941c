//! Batching queued files into recall jobs: per tape, at most so many tapes per job.
//!
//! Reading a tape is mounting it and winding to each file: files of one tape belong in one
//! job (one mount), and a job spanning many tapes waits for as many drives. Archives limit
//! both (DKRZ: recalls should stay within a few tapes), so jobs are cut at whole tapes.

use std::collections::{BTreeMap, HashMap};

/// Jobs for `files` (queue order kept within a tape): files grouped by their tape in
/// `tapes`, groups in order of first appearance, at most `tapes_per_job` groups and
/// `files_per_job` files per job (a tape with more files is split over several jobs). A file
/// without a tape is a group of its own, unless `site_orders` (the archive orders one
/// request's files by tape itself, as a WLCG Tape REST endpoint does): then all such files
/// are one group, recalled by as few requests as `files_per_job` allows.
pub fn plan(
    files: &[String],
    tapes: &HashMap<String, String>,
    tapes_per_job: usize,
    files_per_job: usize,
    site_orders: bool,
) -> Vec<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for f in files {
        if !seen.insert(f.as_str()) {
            continue;
        }
        let key = match tapes.get(f) {
            Some(t) => format!("tape:{t}"),
            None if site_orders => "site".to_string(),
            None => format!("file:{f}"),
        };
        let g = groups.entry(key.clone()).or_default();
        if g.is_empty() {
            order.push(key);
        }
        g.push(f.clone());
    }
    order
        .chunks(tapes_per_job.max(1))
        .flat_map(|keys| {
            let job: Vec<String> = keys
                .iter()
                .flat_map(|k| groups.remove(k).unwrap_or_default())
                .collect();
            job.chunks(files_per_job.max(1))
                .map(<[String]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn files_of_one_tape_share_a_job_and_jobs_are_cut_at_whole_tapes() {
        let files = s(&["/a1", "/b1", "/a2", "/c1", "/x", "/b2", "/a1"]);
        let tapes: HashMap<String, String> = [
            ("/a1", "A"),
            ("/a2", "A"),
            ("/b1", "B"),
            ("/b2", "B"),
            ("/c1", "C"),
        ]
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
        assert_eq!(
            plan(&files, &tapes, 2, 100, false),
            vec![s(&["/a1", "/a2", "/b1", "/b2"]), s(&["/c1", "/x"])]
        );
        assert_eq!(plan(&files, &tapes, 1, 100, false).len(), 4);
        assert_eq!(
            plan(&files, &tapes, 10, 100, false),
            vec![s(&["/a1", "/a2", "/b1", "/b2", "/c1", "/x"])]
        );
        // without tape information every file is its own group
        assert_eq!(
            plan(&s(&["/p", "/q", "/r"]), &HashMap::new(), 2, 100, false),
            vec![s(&["/p", "/q"]), s(&["/r"])]
        );
        assert!(plan(&[], &tapes, 3, 100, false).is_empty());
    }

    #[test]
    fn a_site_that_orders_by_tape_gets_few_large_requests() {
        let files: Vec<String> = (0..7).map(|i| format!("/f{i}")).collect();
        // without tape information and a site that sorts: one request up to the file limit
        assert_eq!(plan(&files, &HashMap::new(), 1, 100, true), vec![files.clone()]);
        assert_eq!(
            plan(&files, &HashMap::new(), 4, 3, true),
            vec![files[..3].to_vec(), files[3..6].to_vec(), files[6..].to_vec()]
        );
        // the file limit also cuts a job of whole tapes
        let tapes: HashMap<String, String> = files.iter().map(|f| (f.clone(), "A".to_string())).collect();
        assert_eq!(
            plan(&files, &tapes, 4, 5, false)
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>(),
            [5, 2]
        );
    }
}
