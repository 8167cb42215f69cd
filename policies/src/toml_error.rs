//! One-line messages for TOML documents that do not parse.

/// `line L, column C: problem` for a TOML parse or schema error (the toml
/// crate's own display spans several lines with a source excerpt).
pub fn one_line(e: &toml::de::Error) -> String {
    let first = e.to_string();
    let first = first.lines().next().unwrap_or_default();
    match first.strip_prefix("TOML parse error at ") {
        Some(location) if e.span().is_some() => format!("{location}: {}", e.message()),
        _ => e.message().to_owned(),
    }
}

/// The 1-based line of byte `offset` in `text` (for errors that point at a value's span).
pub fn line_at(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        a: u32,
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(super::line_at("a\nb\nc", 0), 1);
        assert_eq!(super::line_at("a\nb\nc", 2), 2);
        assert_eq!(super::line_at("a\nb\nc", 99), 3);
    }

    #[test]
    fn names_line_and_column() {
        let e = toml::from_str::<Doc>("\na = \"x\"\n").unwrap_err();
        assert_eq!(super::one_line(&e), "line 2, column 5: invalid type: string \"x\", expected u32");
        let e = toml::from_str::<Doc>("a = 1\nb = 2\n").unwrap_err();
        assert!(super::one_line(&e).starts_with("line 2, column 1: unknown field `b`"), "{}", super::one_line(&e));
    }
}
