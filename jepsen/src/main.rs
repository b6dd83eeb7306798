//! Fault-test harness (DESIGN §8). Not built yet (issue 6).

fn main() {
    eprintln!("tessera-jepsen: fault tests are not built yet (issue 6)");
    std::process::exit(2);
}
