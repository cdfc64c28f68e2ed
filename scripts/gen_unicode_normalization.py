# Writes the Unicode normalization tables PeftSharp needs (from Python's unicodedata, Unicode 14).
# Usage: python3 scripts/gen_unicode_normalization.py src/PeftSharp/Tokenization/Data/unicode-normalization.txt
import unicodedata as u, sys
out = []
out.append(f"# Unicode {u.unidata_version} normalization data for PeftSharp.Tokenization.UnicodeNormalization (generated from the Unicode Character Database)")
for cp in range(0x110000):
    if 0xD800 <= cp <= 0xDFFF or 0xAC00 <= cp <= 0xD7A3: continue
    ch = chr(cp)
    c = u.combining(ch)
    if c: out.append(f"c {cp:X} {c}")
    d = u.normalize("NFD", ch)
    if d != ch: out.append("d %X %s" % (cp, " ".join("%X" % ord(x) for x in d)))
    k = u.normalize("NFKD", ch)
    if k != d: out.append("k %X %s" % (cp, " ".join("%X" % ord(x) for x in k)))
    m = u.decomposition(ch)
    if m and not m.startswith("<"):
        parts = [int(x, 16) for x in m.split()]
        if len(parts) == 2 and u.normalize("NFC", chr(parts[0]) + chr(parts[1])) == ch:
            out.append(f"p {parts[0]:X} {parts[1]:X} {cp:X}")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
