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
    /// Add in `f64` instead of `u64`: the same calls with floating-point
    /// arithmetic, which is what NaN canonicalization in the sandbox costs on.
    #[serde(default)]
    pub float: bool,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub value: u64,
}

fn fib(n: u32) -> u64 {
    if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) }
}

fn fib_float(n: u32) -> f64 {
    if n < 2 { n as f64 } else { fib_float(n - 1) + fib_float(n - 2) }
}

pub fn fibo(input: Input) -> Result<Output, TaskError> {
    if input.n > 90 {
        return Err(TaskError::invalid_input("n must be at most 90"));
    }
    // Every Fibonacci number up to 78 is exact in an f64; the float mode is a
    // benchmark workload, so above that it may round.
    let value = if input.float { fib_float(input.n) as u64 } else { fib(input.n) };
    Ok(Output { value })
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
        let of = |n, float| fibo(Input { n, after: None, float }).unwrap().value;
        assert_eq!((of(0, false), of(1, false), of(10, false), of(20, false)), (0, 1, 55, 6765));
        for n in [0, 1, 10, 20, 30] {
            assert_eq!(of(n, true), of(n, false), "fib({n}) in f64");
        }
        assert!(fibo(Input { n: 91, after: None, float: false }).is_err());
    }
}
