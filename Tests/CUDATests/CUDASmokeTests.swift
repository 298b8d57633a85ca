import Testing
@testable import CUDA
