//! `fibo`: the naive, doubly recursive Fibonacci — the task of Windmill's
//! published benchmark (40 sequential `fibo(10)`, 10 sequential
//! `fibo(33)`), used by `bench/peers.py` to compare Cairn with other
//! orchestrators on the same work.

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Which Fibonacci number; 33 takes ~0.02 s natively. At most 90 (the
    /// largest that fits a u64), though anything above ~45 takes minutes.
    pub n: u32,
    /// Ignored: lets a chain of steps depend on each other.
    #[serde(default)]
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub value: u64,
}

fn fib(n: u32) -> u64 {
    if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) }
}

pub fn fibo(input: Input) -> Result<Output, TaskError> {
    if input.n > 90 {
        return Err(TaskError::invalid_input("n must be at most 90"));
    }
    Ok(Output { value: fib(input.n) })
}

task! {
    name: "fibo",
    description: "Computes the n-th Fibonacci number the slow way.",
    run: fibo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_fibonacci_numbers() {
        let of = |n| fibo(Input { n, after: None }).unwrap().value;
        assert_eq!((of(0), of(1), of(10), of(20)), (0, 1, 55, 6765));
        assert!(fibo(Input { n: 91, after: None }).is_err());
    }
}
