//! Writing a benchmark's results: `<stem>.json` and `<stem>.md` in the results directory. A
//! run the same day does not overwrite the earlier one: that one is kept beside it, renamed
//! `<stem>-<HHMMSS>` after the time it was written (UTC), so `<stem>` is always the latest
//! (what `bench report` gathers) and every run of the day stays.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

/// Writes `json` and `md` as `dir/<stem>.{json,md}`, first moving an earlier pair of that
/// name aside; answers the path without its extension. `json` is serialized as it is (its
/// fields in their order; a `serde_json::Value` would sort them).
pub fn write(dir: &Path, stem: &str, json: &impl serde::Serialize, md: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join(stem);
    keep_earlier(dir, stem)?;
    let json_path = base.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = base.with_extension("md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    Ok(base)
}

/// Renames `dir/<stem>.{json,md}`, if there, to `<stem>-<HHMMSS>.{json,md}` (the JSON's
/// modification time, UTC; a number appended if that name is taken too).
fn keep_earlier(dir: &Path, stem: &str) -> Result<()> {
    let existing: Vec<PathBuf> = ["json", "md"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .filter(|p| p.exists())
        .collect();
    let Some(first) = existing.first() else {
        return Ok(());
    };
    let written = std::fs::metadata(first)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    let secs = written
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    let time = format!("{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let free = (0..100)
        .map(|n| match n {
            0 => format!("{stem}-{time}"),
            n => format!("{stem}-{time}-{n}"),
        })
        .find(|name| {
            !dir.join(format!("{name}.json")).exists() && !dir.join(format!("{name}.md")).exists()
        })
        .with_context(|| format!("no free name to keep the earlier {stem} under"))?;
    for path in existing {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let kept = dir.join(format!("{free}.{ext}"));
        std::fs::rename(&path, &kept)
            .with_context(|| format!("keeping {} as {}", path.display(), kept.display()))?;
    }
    println!("results: the earlier {stem} of today is kept as {free}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_keeps_the_first_beside_it() {
        // Removed when dropped, the test failing or not.
        let scratch = lb_testkit::ScratchPath::temp("results-unit", "");
        let dir = scratch.path().to_owned();
        let first = serde_json::json!({ "run": 1 });
        let second = serde_json::json!({ "run": 2 });
        write(&dir, "micro-2026-12-06", &first, "first\n").unwrap();
        write(&dir, "micro-2026-12-06", &second, "second\n").unwrap();
        write(&dir, "micro-2026-12-06", &second, "third\n").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let latest = std::fs::read_to_string(dir.join("micro-2026-12-06.md")).unwrap();
        let mds: Vec<String> = names
            .iter()
            .filter(|n| n.ends_with(".md"))
            .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
            .collect();
        assert_eq!(names.len(), 6, "{names:?}");
        assert_eq!(latest, "third\n");
        for text in ["first\n", "second\n", "third\n"] {
            assert!(mds.iter().any(|m| m == text), "{text:?} lost: {mds:?}");
        }
    }
}
