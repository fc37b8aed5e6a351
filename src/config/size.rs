//! Sizes as people write them in node.yml and project.yml (`512M`, `10G`, `64K`, or bytes),
//! and printed back the same way. Units are powers of 1024.

/// `10G`, `512M`, `1GiB`, `64K`, `2T`, `4096`: units are powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid =
        || format!("invalid size `{text}`, expected a number of bytes or e.g. `512M`, `10G`, `1T`");
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    if digits_end == 0 {
        return Err(invalid());
    }
    let number: u64 = trimmed[..digits_end].parse().map_err(|_| invalid())?;
    let shift = match trimmed[digits_end..].trim_start() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// `1048576` as `1M`: the largest binary unit that divides the size.
pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}
