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

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        a: u32,
    }

    #[test]
    fn names_line_and_column() {
        let e = toml::from_str::<Doc>("\na = \"x\"\n").unwrap_err();
        assert_eq!(super::one_line(&e), "line 2, column 5: invalid type: string \"x\", expected u32");
        let e = toml::from_str::<Doc>("a = 1\nb = 2\n").unwrap_err();
        assert!(super::one_line(&e).starts_with("line 2, column 1: unknown field `b`"), "{}", super::one_line(&e));
    }
}
