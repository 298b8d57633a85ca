// MoE target.
