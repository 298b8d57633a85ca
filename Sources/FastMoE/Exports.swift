// The umbrella library: one import for users of FastMoE in Swift.
@_exported import CUDA
@_exported import Tensors
@_exported import NN
@_exported import Distributed
@_exported import MoE
@_exported import Training
