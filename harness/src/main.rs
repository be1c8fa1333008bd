mod netns;
mod scenario;

fn main() {}
