using TorchSharp;
using static TorchSharp.torch;

namespace PeftSharp.IO;

/// <summary>The safetensors dtype strings and their torch equivalents.</summary>
public static class SafetensorsDType
{
    static readonly Dictionary<string, (ScalarType Type, int Size)> ByName = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    public static IReadOnlyCollection<string> Names => ByName.Keys;

    public static bool TryParse(string name, out ScalarType type, out int size)
    {
        if (ByName.TryGetValue(name, out var v)) { type = v.Type; size = v.Size; return true; }
        type = default; size = 0; return false;
    }

    public static string NameOf(ScalarType type) =>
        ByName.FirstOrDefault(kv => kv.Value.Type == type).Key
        ?? throw new PeftSharpException($"dtype {type} cannot be stored in safetensors (supported: {string.Join(", ", ByName.Keys)})");

    public static int SizeOf(ScalarType type) => ByName[NameOf(type)].Size;
}
