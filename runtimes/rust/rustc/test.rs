fn main() {
    println!("execbox smoke ok");
}
