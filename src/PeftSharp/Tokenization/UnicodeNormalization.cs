using System.Text;

namespace PeftSharp.Tokenization;

/// <summary>
/// NFC/NFD/NFKC/NFKD in managed code. .NET's <c>string.Normalize</c> is a silent no-op under
/// InvariantGlobalization (no ICU), which would change token ids, so the tables ship with the library
/// (Data/unicode-normalization.txt, made by scripts/gen_unicode_normalization.py).
/// </summary>
internal static class UnicodeNormalization
{
    const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7, LCount = 19, VCount = 21, TCount = 28;
    const int NCount = VCount * TCount, SCount = LCount * NCount;

    static readonly Dictionary<int, byte> Ccc = new();
    static readonly Dictionary<int, int[]> Canonical = new(), Compat = new();
    static readonly Dictionary<long, int> Compose = new();

    static UnicodeNormalization()
    {
        using var stream = typeof(UnicodeNormalization).Assembly.GetManifestResourceStream("PeftSharp.Tokenization.unicode-normalization.txt")
            ?? throw new InvalidOperationException("embedded resource unicode-normalization.txt is missing");
        using var reader = new StreamReader(stream);
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0 || line[0] == '#') continue;
            var f = line.Split(' ');
            int cp = Convert.ToInt32(f[1], 16);
            int[] Rest() => f.Skip(2).Select(x => Convert.ToInt32(x, 16)).ToArray();
            switch (f[0])
            {
                case "c": Ccc[cp] = byte.Parse(f[2]); break;
                case "d": Canonical[cp] = Rest(); break;
                case "k": Compat[cp] = Rest(); break;
                case "p": Compose[Key(cp, Convert.ToInt32(f[2], 16))] = Convert.ToInt32(f[3], 16); break;
            }
        }
    }

    static long Key(int a, int b) => ((long)a << 21) | (uint)b;

    static int CombiningClass(int cp) => cp < 0x300 ? 0 : Ccc.GetValueOrDefault(cp);

    public static string Normalize(string s, NormalizationForm form)
    {
        bool compose = form is NormalizationForm.FormC or NormalizationForm.FormKC;
        bool compat = form is NormalizationForm.FormKC or NormalizationForm.FormKD;
        // Below U+00A0 (and below U+0300 for NFC) every char is already normalized in all forms / in NFC.
        int limit = compose && !compat ? 0x300 : 0xA0;
        bool quick = true;
        foreach (var ch in s) if (ch >= limit) { quick = false; break; }
        if (quick) return s;

        var cps = Decompose(s, compat);
        if (compose) ComposeInPlace(cps);
        var sb = new StringBuilder(s.Length);
        foreach (var cp in cps) sb.Append(char.ConvertFromUtf32(cp));
        return sb.ToString();
    }

    static List<int> Decompose(string s, bool compat)
    {
        var cps = new List<int>(s.Length);
        foreach (var r in s.EnumerateRunes())
        {
            int cp = r.Value;
            if (cp is >= SBase and < SBase + SCount)
            {
                int i = cp - SBase;
                cps.Add(LBase + i / NCount);
                cps.Add(VBase + i % NCount / TCount);
                if (i % TCount != 0) cps.Add(TBase + i % TCount);
            }
            else if (compat && Compat.TryGetValue(cp, out var k)) cps.AddRange(k);
            else if (Canonical.TryGetValue(cp, out var d)) cps.AddRange(d);
            else cps.Add(cp);
        }
        // Canonical ordering: stable sort of each run of non-starters by combining class.
        for (int i = 1; i < cps.Count; i++)
        {
            int c = CombiningClass(cps[i]);
            if (c == 0) continue;
            for (int j = i; j > 0 && CombiningClass(cps[j - 1]) > c; j--) (cps[j - 1], cps[j]) = (cps[j], cps[j - 1]);
        }
        return cps;
    }

    static void ComposeInPlace(List<int> cps)
    {
        if (cps.Count == 0) return;
        int starter = CombiningClass(cps[0]) == 0 ? 0 : -1, write = 1, lastClass = starter == 0 ? 0 : 256;
        for (int read = 1; read < cps.Count; read++)
        {
            int cp = cps[read], cls = CombiningClass(cp);
            bool blocked = starter < 0 || (write - 1 != starter && lastClass >= cls) || (write - 1 != starter && lastClass == 0);
            if (!blocked && TryCompose(cps[starter], cp, out var composite))
            {
                cps[starter] = composite;
                continue;
            }
            if (cls == 0) { starter = write; lastClass = 0; }
            else lastClass = cls;
            cps[write++] = cp;
        }
        cps.RemoveRange(write, cps.Count - write);
    }

    static bool TryCompose(int a, int b, out int composite)
    {
        if (a is >= LBase and < LBase + LCount && b is >= VBase and < VBase + VCount)
        {
            composite = SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
            return true;
        }
        if (a is >= SBase and < SBase + SCount && (a - SBase) % TCount == 0 && b is > TBase and < TBase + TCount)
        {
            composite = a + (b - TBase);
            return true;
        }
        return Compose.TryGetValue(Key(a, b), out composite);
    }
}
