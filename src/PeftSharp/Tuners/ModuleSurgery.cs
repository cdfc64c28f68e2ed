using System.Collections;
using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PeftSharp.Tuners;

/// <summary>
/// Replaces a child module of any TorchSharp model by name. TorchSharp keeps two views of a child: the C# field
/// (what <c>forward</c> calls) and the parent's registry (what named_modules/state_dict/to() see). Both are
/// changed; the registry entry is replaced in place so state_dict order is kept (torchsharp-notes §1).
/// </summary>
public static class ModuleSurgery
{
    static readonly FieldInfo SubmodulesField = typeof(nn.Module).GetField("_internal_submodules", BindingFlags.Instance | BindingFlags.NonPublic)
        ?? throw new PeftPlatformException("TorchSharp's Module has no _internal_submodules field (unsupported TorchSharp version)");

    /// <summary>The module at a dotted path ("" = the root).</summary>
    public static nn.Module Get(nn.Module root, string path)
    {
        if (path.Length == 0) return root;
        var m = root;
        foreach (var part in path.Split('.'))
        {
            var child = m.named_children().FirstOrDefault(c => c.name == part).module
                ?? throw new PeftSharpException($"module '{path}' not found (no child '{part}' in {m.GetType().Name})");
            m = child;
        }
        return m;
    }

    public static (string Parent, string Child) Split(string path)
    {
        int dot = path.LastIndexOf('.');
        return dot < 0 ? ("", path) : (path[..dot], path[(dot + 1)..]);
    }

    /// <summary>Puts <paramref name="replacement"/> where the module at <paramref name="path"/> is.</summary>
    public static void Replace(nn.Module root, string path, nn.Module replacement)
    {
        var (parentPath, name) = Split(path);
        var parent = Get(root, parentPath);
        var registry = Registry(parent);
        if (!registry.ContainsKey(name)) throw new PeftSharpException($"module '{path}' not found in {parent.GetType().Name}");
        var old = registry[name];
        if (ReferenceEquals(old, replacement)) return;

        bool setForward = false;
        if (parent is IList list && int.TryParse(name, out int index))
        {
            // ModuleList: forward iterates its own list, registration happened once at construction.
            if (!list.GetType().GetGenericArguments().All(t => t.IsInstanceOfType(replacement)))
                throw new PeftSharpException($"cannot put a {replacement.GetType().Name} into the list at '{path}'");
            list[index] = replacement;
            setForward = true;
        }
        else
        {
            foreach (var field in Fields(parent.GetType()))
            {
                if (ComponentName(field) != name || !ReferenceEquals(field.GetValue(parent), old)) continue;
                if (!field.FieldType.IsInstanceOfType(replacement))
                    throw new PeftSharpException(
                        $"cannot replace '{path}': field {parent.GetType().Name}.{field.Name} is typed {field.FieldType.Name}, which a {replacement.GetType().Name} is not " +
                        "(model code should type child layers as Module<Tensor, Tensor>)");
                field.SetValue(parent, replacement);
                setForward = true;
            }
        }
        if (!setForward)
            throw new PeftSharpException($"cannot replace '{path}': {parent.GetType().Name} has no field holding it, so its forward would not see the new module");
        registry[name] = replacement;
    }

    static IEnumerable<FieldInfo> Fields(Type? t)
    {
        for (; t is not null && t != typeof(object); t = t.BaseType)
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                if (typeof(nn.Module).IsAssignableFrom(f.FieldType) || f.FieldType.IsAssignableFrom(typeof(nn.Module)))
                    yield return f;
    }

    static string ComponentName(FieldInfo f)
    {
        var attr = f.GetCustomAttributes().FirstOrDefault(a => a.GetType().Name == "ComponentNameAttribute");
        return attr?.GetType().GetProperty("Name")?.GetValue(attr) as string ?? f.Name;
    }

    static IDictionary<string, nn.Module> Registry(nn.Module parent) => (IDictionary<string, nn.Module>)SubmodulesField.GetValue(parent)!;
}
