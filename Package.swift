// swift-tools-version:6.0
import PackageDescription

// Layering (../shared/DESIGN.md): each target imports only those listed before it.
let package = Package(
    name: "FastMoE",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "FastMoE", targets: ["FastMoE"]),
        .executable(name: "fastmoe", targets: ["fastmoe"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CUDA"),
        .target(name: "Tensors", dependencies: ["CUDA"]),
        .target(name: "NN", dependencies: ["Tensors"]),
        .target(name: "Distributed", dependencies: ["NN", "Tensors", "CUDA"]),
        .target(name: "MoE", dependencies: ["NN", "Distributed", "Tensors"]),
        .target(name: "Training", dependencies: ["MoE", "NN", "Distributed", "Tensors"]),
        .target(name: "FastMoE", dependencies: ["Training", "MoE", "NN", "Distributed", "Tensors", "CUDA"]),
        .executableTarget(
            name: "fastmoe",
            dependencies: ["FastMoE", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        // Finite-difference checks and random inputs shared by the test targets below.
        .target(name: "TestSupport", dependencies: ["NN", "Tensors"], path: "Tests/TestSupport"),
        .testTarget(name: "CUDATests", dependencies: ["CUDA"]),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "TestSupport"]),
        .testTarget(name: "NNTests", dependencies: ["NN", "TestSupport"]),
        .testTarget(name: "MoETests", dependencies: ["MoE", "Distributed", "TestSupport"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Distributed", "TestSupport"]),
        // Every `///` example of MoE and NN, compiled (and kept in sync by a test).
        .testTarget(name: "DocExampleTests", dependencies: ["MoE", "NN", "Tensors", "Distributed", "TestSupport"]),
        .testTarget(name: "DistributedTests", dependencies: ["Distributed", "TestSupport"]),
    ],
    // Swift 6 tools, Swift 5 language mode: the engine shares reference-counted tensors across
    // Dispatch workers by design (raw buffers, disjoint rows), which strict checking cannot express.
    swiftLanguageModes: [.v5]
)
