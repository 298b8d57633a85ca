import TestSupport
import Glibc

/// GPT-2's tanh GELU in float64, written out with libm.
func geluTanhReference(_ x: Double) -> Double {
    0.5 * x * (1 + Glibc.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
}
