//! `colorfaas`: the Color FaaS command line (see `sdk/README.md`).

fn main() {
    std::process::exit(sdk::main());
}
