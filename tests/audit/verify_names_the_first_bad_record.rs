//! A trail that was changed, truncated, or had records removed or
//! reordered: `verify_dir` names the first bad record (file, line, seq, why).
//! An untouched trail, also across rotated files, verifies. Line 1 of a
//! trail is the `runtime.started` its opening wrote; the records follow.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sessionbus::audit::*;
use sessionbus_testkit::audit::*;

/// A trail of `n` session records, rotated past `rotate_size`.
fn write_trail(dir: &Path, n: u64, rotate_size: u64) {
    let config = AuditConfig {
        rotate_size,
        ..audit_config(dir)
    };
    let mut trail = AuditTrail::open(&config).unwrap();
    for i in 0..n {
        let mut record = AuditRecord::new(action::SESSION_OPENED, UNIX_EPOCH);
        record.resource = Some(format!("{i:032x}"));
        record.bytes = Some(i * 1000);
        trail.append(record).unwrap();
    }
    trail.sync().unwrap();
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(file: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(file, text).unwrap();
}

fn single_file_trail(name: &str) -> (PathBuf, PathBuf) {
    let dir = scratch_dir(name);
    write_trail(&dir, 6, 1 << 20);
    let files = trail_files(&dir);
    assert_eq!(files.len(), 1);
    assert!(verify_dir(&dir, &test_key()).is_ok());
    (dir.clone(), files[0].clone())
}

#[test]
fn an_untouched_trail_verifies() {
    let (dir, _) = single_file_trail("verify-ok");
    let report = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(report.records, 1 + 6);
    assert_eq!((report.first_seq, report.last_seq), (Some(0), Some(6)));
    assert!(!report.ends_with_shutdown);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_changed_record_is_named() {
    let (dir, file) = single_file_trail("verify-changed");
    let mut all = lines(&file);
    all[4] = all[4].replace("\"bytes\":3000", "\"bytes\":3");
    write_lines(&file, &all);
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!((bad.file.clone(), bad.line, bad.seq), (file, 5, Some(4)));
    assert_eq!(bad.why, BreakKind::Changed);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_removed_record_is_named_by_the_one_after_it() {
    let (dir, file) = single_file_trail("verify-removed");
    let mut all = lines(&file);
    all.remove(2);
    write_lines(&file, &all);
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!((bad.line, bad.seq), (3, Some(3)));
    assert_eq!(
        bad.why,
        BreakKind::BrokenLink {
            expected: 2,
            found: 3
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reordered_records_are_named() {
    let (dir, file) = single_file_trail("verify-reordered");
    let mut all = lines(&file);
    all.swap(1, 4);
    write_lines(&file, &all);
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!((bad.line, bad.seq), (2, Some(4)));
    assert_eq!(
        bad.why,
        BreakKind::BrokenLink {
            expected: 1,
            found: 4
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_truncated_file_is_named_at_its_cut() {
    let (dir, file) = single_file_trail("verify-truncated");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, &text[..text.len() - 40]).unwrap();
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!(bad.line, 7);
    assert!(matches!(bad.why, BreakKind::Malformed(_)), "{bad}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_first_record_removed_is_named() {
    let (dir, file) = single_file_trail("verify-first-removed");
    let mut all = lines(&file);
    all.remove(0);
    write_lines(&file, &all);
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!(bad.line, 1);
    assert_eq!(
        bad.why,
        BreakKind::BrokenLink {
            expected: 0,
            found: 1
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn another_key_does_not_verify() {
    let (dir, file) = single_file_trail("verify-other-key");
    let bad = verify_dir(&dir, &[0x42; 32]).unwrap_err();
    let written_under = read_records(&dir)[0].key_id.clone().unwrap();
    assert_eq!(
        (bad.file, bad.line, bad.why),
        (file, 1, BreakKind::UnknownKey(written_under))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn across_rotated_files_the_chain_verifies_and_a_cut_file_is_found() {
    let dir = scratch_dir("verify-rotated");
    write_trail(&dir, 40, 1024);
    let files = trail_files(&dir);
    assert!(files.len() >= 3, "rotated by size: {} files", files.len());
    let report = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(report.records, 1 + 40);
    assert_eq!(report.files.len(), files.len());

    // Records cut from the end of a file that is not the last: the next
    // file's first record no longer links.
    let middle = &files[1];
    let mut all = lines(middle);
    let kept = all.len() - 1;
    let cut_seq: u64 = serde_json::from_str::<AuditRecord>(&all[kept]).unwrap().seq;
    all.truncate(kept);
    write_lines(middle, &all);
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!((bad.file.clone(), bad.line), (files[2].clone(), 1));
    assert_eq!(
        bad.why,
        BreakKind::BrokenLink {
            expected: cut_seq,
            found: cut_seq + 1
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
