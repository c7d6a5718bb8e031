//! A small zip reader for OSV exports (`all.zip`): stored and deflated
//! entries, zip64 archives, one entry in memory at a time.
//!
//! For: reading archives kiln is given. Must never: write outside memory
//! or accept an entry whose size does not match its directory record.

use std::io::Read;

/// What [`unzip_each`] calls with each entry: its name and bytes.
pub type EntryFn<'a> = dyn FnMut(&str, Vec<u8>) -> Result<(), String> + 'a;

/// The entries of a zip archive: (name, contents). See [`unzip_each`].
pub fn unzip(zip: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    unzip_each(zip, &mut |name, bytes| {
        out.push((name.to_owned(), bytes));
        Ok(())
    })?;
    Ok(out)
}

/// Calls `f` with each entry of a zip archive in turn, inflated (one entry
/// in memory at a time: osv.dev's Debian export inflates to gigabytes).
/// Stored and deflated entries only; zip64 archives (over 65,535 entries,
/// which a full export has) are read; encryption is refused by name.
/// Returns the number of entries.
pub fn unzip_each(zip: &[u8], f: &mut EntryFn<'_>) -> Result<usize, String> {
    let u16_at = |i: usize| zip.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |i: usize| zip.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let u64_at = |i: usize| {
        zip.get(i..i + 8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    };
    let short = || "truncated: a header runs past the end".to_owned();
    // The end-of-central-directory record, searched from the end (it may
    // be followed by a comment of up to 64 KiB).
    let lowest = zip.len().saturating_sub(22 + 65_535);
    let eocd = (lowest..=zip.len().saturating_sub(22))
        .rev()
        .find(|&i| zip[i..].starts_with(b"PK\x05\x06"))
        .ok_or("not a zip file (no end-of-central-directory record)")?;
    let mut count = u16_at(eocd + 10).ok_or_else(short)?;
    let mut at = u32_at(eocd + 16).ok_or_else(short)?;
    if count == 0xFFFF || at == 0xFFFF_FFFF {
        // zip64: the locator just before the record names the zip64 end
        // record, which holds the 8-byte count and offset.
        let loc =
            eocd.checked_sub(20).filter(|&l| zip[l..].starts_with(b"PK\x06\x07")).ok_or("zip64 without its locator")?;
        let end64 = u64_at(loc + 8).ok_or_else(short)?;
        if !zip.get(end64..).is_some_and(|z| z.starts_with(b"PK\x06\x06")) {
            return Err(format!("bad zip64 end record at byte {end64}"));
        }
        count = u64_at(end64 + 32).ok_or_else(short)?;
        at = u64_at(end64 + 48).ok_or_else(short)?;
    }
    let mut entries = 0;
    for _ in 0..count {
        if !zip.get(at..).is_some_and(|z| z.starts_with(b"PK\x01\x02")) {
            return Err(format!("bad central directory entry at byte {at}"));
        }
        let flags = u16_at(at + 8).ok_or_else(short)?;
        let method = u16_at(at + 10).ok_or_else(short)?;
        let mut csize = u32_at(at + 20).ok_or_else(short)?;
        let mut usize_ = u32_at(at + 24).ok_or_else(short)?;
        let (n, x, c) = (
            u16_at(at + 28).ok_or_else(short)?,
            u16_at(at + 30).ok_or_else(short)?,
            u16_at(at + 32).ok_or_else(short)?,
        );
        let mut local = u32_at(at + 42).ok_or_else(short)?;
        let name = String::from_utf8_lossy(zip.get(at + 46..at + 46 + n).ok_or_else(short)?).into_owned();
        // A zip64 extra field holds, in order, the fields set to all ones.
        if usize_ == 0xFFFF_FFFF || csize == 0xFFFF_FFFF || local == 0xFFFF_FFFF {
            let extra = zip.get(at + 46 + n..at + 46 + n + x).ok_or_else(short)?;
            let mut i = 0;
            while i + 4 <= extra.len() {
                let (id, len) = (
                    u16::from_le_bytes([extra[i], extra[i + 1]]),
                    u16::from_le_bytes([extra[i + 2], extra[i + 3]]) as usize,
                );
                if id == 1 {
                    let base = at + 46 + n + i + 4;
                    let mut k = 0;
                    for field in [&mut usize_, &mut csize, &mut local] {
                        if *field == 0xFFFF_FFFF {
                            *field = u64_at(base + k).ok_or_else(short)?;
                            k += 8;
                        }
                    }
                    break;
                }
                i += 4 + len;
            }
        }
        at += 46 + n + x + c;
        if flags & 1 != 0 {
            return Err(format!("{name}: encrypted entries are not read"));
        }
        if name.ends_with('/') {
            continue;
        }
        if !zip.get(local..).is_some_and(|z| z.starts_with(b"PK\x03\x04")) {
            return Err(format!("{name}: bad local header at byte {local}"));
        }
        let start = local + 30 + u16_at(local + 26).ok_or_else(short)? + u16_at(local + 28).ok_or_else(short)?;
        let data = zip.get(start..start + csize).ok_or_else(|| format!("{name}: its data runs past the end"))?;
        let bytes = match method {
            0 => data.to_vec(),
            8 => {
                let mut v = Vec::with_capacity(usize_.min(64 << 20));
                flate2::read::DeflateDecoder::new(data)
                    .take(usize_ as u64 + 1)
                    .read_to_end(&mut v)
                    .map_err(|e| format!("{name}: does not inflate: {e}"))?;
                v
            }
            m => return Err(format!("{name}: compression method {m} is not read (only stored and deflate)")),
        };
        if bytes.len() != usize_ {
            return Err(format!("{name}: inflates to {} bytes, the directory says {usize_}", bytes.len()));
        }
        f(&name, bytes)?;
        entries += 1;
    }
    Ok(entries)
}
