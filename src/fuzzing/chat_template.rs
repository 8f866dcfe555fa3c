//! Chat templates: untrusted Jinja from model files, compiled and rendered in the sandbox.
//!
//! Input: the template source, then NUL-separated role / content pairs of the conversation.
//! An even number of NULs asks for the generation prompt. `Ok` means the template compiled
//! and rendered.

use super::bytes::split_text;
use super::{Outcome, Rejected};
use crate::tokenizer::MAX_CHAT_OUTPUT_BYTES as MAX_OUTPUT_BYTES;
use crate::tokenizer::{ChatMessage, ChatTemplate};

pub fn run(data: &[u8]) -> Outcome {
    let mut parts = split_text(data, '\0').into_iter();
    let source = parts.next().unwrap_or_default();
    let rest: Vec<String> = parts.collect();
    let add_generation_prompt = rest.len().is_multiple_of(2);
    let messages: Vec<ChatMessage> = rest
        .chunks(2)
        .map(|p| ChatMessage::new(p[0].clone(), p.get(1).cloned().unwrap_or_default()))
        .collect();
    let template = ChatTemplate::new(&source, "<s>", "</s>").map_err(Rejected::from)?;
    render(&template, &messages, add_generation_prompt)
}

/// Renders and checks the output bound.
pub fn render(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Outcome {
    let out = template
        .render(messages, add_generation_prompt)
        .map_err(Rejected::from)?;
    assert!(
        out.len() <= MAX_OUTPUT_BYTES,
        "rendered {} bytes, over the limit",
        out.len()
    );
    Ok(())
}
