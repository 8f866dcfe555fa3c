//! Pre-tokenizer rules of byte-level BPE vocabularies, selected by `tokenizer.ggml.pre`.
//!
//! A rule is a list of regular expressions applied in turn: each one splits every piece left
//! by the previous one into matches and the text between them (all kept). The expressions
//! are those the respective models were trained with, written for Oniguruma.

/// GPT-2's split: contractions, letters, digits, other symbols, whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3: case-insensitive contractions, digits in groups of up to three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2: as Llama 3 but every digit on its own.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 3.5: as Qwen 2, with combining marks kept inside words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A pre-tokenizer: its canonical name, its regex sequence, and whether whole words found in
/// the vocabulary skip the merges (Llama 3 was trained that way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreTokenizerRule {
    pub name: &'static str,
    pub regexes: &'static [&'static str],
    pub ignore_merges: bool,
}

const fn rule(name: &'static str, regexes: &'static [&'static str]) -> PreTokenizerRule {
    PreTokenizerRule {
        name,
        regexes,
        ignore_merges: false,
    }
}

/// The rule for a `tokenizer.ggml.pre` value, or `None` when the name is unknown.
pub fn lookup(pre: &str) -> Option<PreTokenizerRule> {
    Some(match pre {
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "phi-2" | "jais" | "poro-chat" => {
            rule("gpt-2", &[GPT2])
        }
        // llama.cpp's fallback for byte-level vocabularies converted without a name.
        "default" => rule(
            "default",
            &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe" | "falcon3" | "pixtral" => {
            PreTokenizerRule {
                name: "llama-bpe",
                regexes: &[LLAMA3],
                ignore_merges: true,
            }
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => rule("qwen2", &[QWEN2]),
        "qwen35" => rule("qwen35", &[QWEN35]),
        // Digits split one by one, then GPT-2's rule (SmolLM, StarCoder and relatives).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
            rule("smollm", &[r"\p{N}", GPT2])
        }
        "falcon" => rule(
            "falcon",
            &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
        ),
        "deepseek-coder" => rule(
            "deepseek-coder",
            &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
                r"\p{N}",
            ],
        ),
        _ => return None,
    })
}

/// The rule used for names `lookup` does not know: GPT-2's, the common ancestor of most.
pub fn fallback() -> PreTokenizerRule {
    rule("gpt-2", &[GPT2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_resolve() {
        assert_eq!(lookup("qwen2").map(|r| r.name), Some("qwen2"));
        assert_eq!(lookup("smollm").map(|r| r.name), Some("smollm"));
        assert!(lookup("llama-bpe").is_some_and(|r| r.ignore_merges));
        assert_eq!(lookup("gpt-2").map(|r| r.name), Some("gpt-2"));
        assert!(lookup("no-such-pre").is_none());
        assert_eq!(fallback().name, "gpt-2");
    }
}
