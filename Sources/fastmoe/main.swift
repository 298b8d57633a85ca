import FastMoE
print("fastmoe")
