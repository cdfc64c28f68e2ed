using System.Reflection;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace PeftSharp.Models;

/// <summary>
/// Finds and replaces submodules by qualified name ("model.layers.0.self_attn.q_proj"). A replacement must
/// change both what <c>forward</c> uses (the parent's C# field, or a ModuleList slot) and the parent's module
/// registry (names, state_dict, <c>to()</c>); the registry entry is replaced in place so key order is kept.
/// </summary>
public static class ModuleSurgery
{
    static readonly FieldInfo Registry = typeof(nn.Module).GetField("_internal_submodules", BindingFlags.NonPublic | BindingFlags.Instance)
        ?? throw new PeftPlatformException("this TorchSharp version has no nn.Module._internal_submodules; module replacement needs it");

    public static nn.Module Get(nn.Module root, string qualifiedName)
    {
        var m = root;
        if (qualifiedName.Length == 0) return m;
        foreach (var part in qualifiedName.Split('.'))
        {
            var child = m.named_children().FirstOrDefault(c => c.name == part).module;
            m = child ?? throw new PeftSharpException($"module '{qualifiedName}' not found: '{part}' is not a child of {m.GetType().Name} (children: {string.Join(", ", m.named_children().Select(c => c.name))})");
        }
        return m;
    }

    public static nn.Module Replace(nn.Module root, string qualifiedName, nn.Module replacement)
    {
        int dot = qualifiedName.LastIndexOf('.');
        var parent = Get(root, dot < 0 ? "" : qualifiedName[..dot]);
        var name = qualifiedName[(dot + 1)..];
        var registry = (OrderedDict<string, nn.Module>)Registry.GetValue(parent)!;
        if (!registry.TryGetValue(name, out var old))
            throw new PeftSharpException($"module '{qualifiedName}' not found in {parent.GetType().Name}");

        if (!SetListSlot(parent, name, replacement)) SetField(parent, name, qualifiedName, replacement);
        registry[name] = replacement; // keyed set keeps the entry's position
        return old;
    }

    /// <summary>Whether <see cref="Replace"/> would accept a module of <paramref name="type"/> at <paramref name="qualifiedName"/>.</summary>
    public static bool CanReplace(nn.Module root, string qualifiedName, Type type)
    {
        int dot = qualifiedName.LastIndexOf('.');
        if (dot < 0 && qualifiedName.Length == 0) return false;
        var parent = Get(root, dot < 0 ? "" : qualifiedName[..dot]);
        var name = qualifiedName[(dot + 1)..];
        var listType = parent.GetType();
        if (listType.IsGenericType && listType.GetGenericTypeDefinition() == typeof(TorchSharp.Modules.ModuleList<>))
            return listType.GetGenericArguments()[0].IsAssignableFrom(type);
        for (var t = listType; t is not null && t != typeof(nn.Module); t = t.BaseType)
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                if (f.ComponentName() == name) return f.FieldType.IsAssignableFrom(type);
        return false;
    }

    static bool SetListSlot(nn.Module parent, string name, nn.Module replacement)
    {
        var listType = parent.GetType();
        if (!listType.IsGenericType || listType.GetGenericTypeDefinition() != typeof(TorchSharp.Modules.ModuleList<>)) return false;
        var itemType = listType.GetGenericArguments()[0];
        if (!itemType.IsInstanceOfType(replacement))
            throw new PeftSharpException($"ModuleList<{itemType.Name}> cannot hold a {replacement.GetType().Name}");
        listType.GetProperty("Item")!.SetValue(parent, replacement, new object[] { int.Parse(name) });
        return true;
    }

    static void SetField(nn.Module parent, string name, string qualifiedName, nn.Module replacement)
    {
        for (var t = parent.GetType(); t is not null && t != typeof(nn.Module); t = t.BaseType)
        {
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                if (f.ComponentName() != name) continue;
                if (!f.FieldType.IsInstanceOfType(replacement))
                    throw new PeftSharpException($"cannot replace '{qualifiedName}': field {t.Name}.{f.Name} is typed {f.FieldType.Name}, which a {replacement.GetType().Name} does not fit (type it Module<Tensor,Tensor>)");
                f.SetValue(parent, replacement);
                return;
            }
        }
        throw new PeftSharpException($"cannot replace '{qualifiedName}': {parent.GetType().Name} has no field for it, so its forward would keep the old module");
    }
}
