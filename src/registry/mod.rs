pub mod meta;
pub mod selector;
