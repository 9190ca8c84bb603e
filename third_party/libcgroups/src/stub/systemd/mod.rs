pub mod legacy;
pub mod manager;
