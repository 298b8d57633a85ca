/// The library version, written into checkpoints and printed by `fastmoe --version`.
public enum FastMoEVersion {
    public static let string = "0.1.0"
}
