pub mod discovery;
pub mod openapi;
pub mod table;
