// `sqlx::migrate!` embeds migrations/ at compile time, and on stable Rust it cannot tell cargo
// to watch that folder: without this line a new migration file is silently left out of an
// incremental build (sqlx's `migrate!` documentation asks for this build script).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
