using System.Text;

namespace PeftSharp.Tokenization;

/// <summary>
/// GPT-2's reversible byte ↔ printable-char map: byte-level BPE vocabularies spell every UTF-8 byte as one
/// visible char (space is <c>Ġ</c>), so decoding must collect bytes across tokens before reading UTF-8.
/// </summary>
internal static class ByteLevel
{
    public static readonly char[] ByteToChar = BuildMap();
    static readonly Dictionary<char, byte> CharToByte = ByteToChar.Select((c, b) => (c, b)).ToDictionary(p => p.c, p => (byte)p.b);

    static char[] BuildMap()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    public static string Encode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        return string.Create(bytes.Length, bytes, (span, src) =>
        {
            for (int i = 0; i < src.Length; i++) span[i] = ByteToChar[src[i]];
        });
    }

    /// <summary>Appends the bytes a byte-level token stands for; chars outside the map (added tokens) as their UTF-8.</summary>
    public static void AppendBytes(string token, List<byte> bytes)
    {
        Span<byte> buf = stackalloc byte[4];
        foreach (var r in token.EnumerateRunes())
        {
            if (r.IsBmp && CharToByte.TryGetValue((char)r.Value, out var b)) bytes.Add(b);
            else
            {
                int n = r.EncodeToUtf8(buf);
                for (int i = 0; i < n; i++) bytes.Add(buf[i]);
            }
        }
    }
}
