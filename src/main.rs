fn main() {
    std::process::exit(kiln::run());
}
