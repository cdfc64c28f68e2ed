namespace PeftSharp.Tokenization.ChatTemplates;

/// <summary>Conventional chat formats for model folders that ship no chat_template.</summary>
internal static class BuiltInTemplates
{
    /// <summary>
    /// ChatML (Qwen, many fine-tunes): every message is <c>&lt;|im_start|&gt;{role}\n{content}&lt;|im_end|&gt;\n</c>;
    /// the generation prompt is <c>&lt;|im_start|&gt;assistant\n</c>.
    /// </summary>
    public const string ChatML =
        "{%- for message in messages %}\n" +
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n" +
        "{%- endfor %}\n" +
        "{%- if add_generation_prompt %}\n" +
        "{{- '<|im_start|>assistant\\n' }}\n" +
        "{%- endif %}";

    /// <summary>
    /// Llama 3 Instruct: <c>{bos_token}</c> once, then per message
    /// <c>&lt;|start_header_id|&gt;{role}&lt;|end_header_id|&gt;\n\n{content|trim}&lt;|eot_id|&gt;</c>; the generation
    /// prompt is the assistant header <c>&lt;|start_header_id|&gt;assistant&lt;|end_header_id|&gt;\n\n</c>.
    /// </summary>
    public const string Llama3 =
        "{{- bos_token }}\n" +
        "{%- for message in messages %}\n" +
        "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}\n" +
        "{%- endfor %}\n" +
        "{%- if add_generation_prompt %}\n" +
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n" +
        "{%- endif %}";

    /// <summary>
    /// Llama 2 chat: <c>{bos}[INST] &lt;&lt;SYS&gt;&gt;\n{system}\n&lt;&lt;/SYS&gt;&gt;\n\n{user} [/INST] {assistant} {eos}</c>, then
    /// <c>{bos}[INST] {user} [/INST]</c> for each further turn. An optional first system message goes inside the first
    /// [INST]; roles must alternate user/assistant (raise_exception otherwise). Contents are stripped. The
    /// generation prompt is implicit (the text ends with [/INST]).
    /// </summary>
    public const string Llama2 =
        "{%- if messages and messages[0].role == 'system' %}\n" +
        "{%- set system_message = messages[0].content %}\n" +
        "{%- set loop_messages = messages[1:] %}\n" +
        "{%- else %}\n" +
        "{%- set system_message = none %}\n" +
        "{%- set loop_messages = messages %}\n" +
        "{%- endif %}\n" +
        "{%- for message in loop_messages %}\n" +
        "{%- if (message.role == 'user') != (loop.index0 % 2 == 0) %}\n" +
        "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n" +
        "{%- endif %}\n" +
        "{%- set content = message.content %}\n" +
        "{%- if loop.first and system_message is not none %}\n" +
        "{%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + content %}\n" +
        "{%- endif %}\n" +
        "{%- if message.role == 'user' %}\n" +
        "{{- bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\n" +
        "{%- else %}\n" +
        "{{- ' ' + content.strip() + ' ' + eos_token }}\n" +
        "{%- endif %}\n" +
        "{%- endfor %}";

    /// <summary>
    /// Alpaca: a preamble (the system message, else Alpaca's standard one) and a blank line, then
    /// <c>### Instruction:\n{user}\n\n</c> and <c>### Response:\n{assistant}{eos_token}\n\n</c> per message; the
    /// generation prompt is <c>### Response:\n</c>.
    /// </summary>
    public const string Alpaca =
        "{%- if messages and messages[0].role == 'system' %}\n" +
        "{{- messages[0].content + '\\n\\n' }}\n" +
        "{%- set loop_messages = messages[1:] %}\n" +
        "{%- else %}\n" +
        "{{- 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}\n" +
        "{%- set loop_messages = messages %}\n" +
        "{%- endif %}\n" +
        "{%- for message in loop_messages %}\n" +
        "{%- if message.role == 'user' %}\n" +
        "{{- '### Instruction:\\n' + message.content + '\\n\\n' }}\n" +
        "{%- elif message.role == 'assistant' %}\n" +
        "{{- '### Response:\\n' + message.content + eos_token + '\\n\\n' }}\n" +
        "{%- else %}\n" +
        "{{- raise_exception('alpaca template: unsupported role ' + message.role) }}\n" +
        "{%- endif %}\n" +
        "{%- endfor %}\n" +
        "{%- if add_generation_prompt %}\n" +
        "{{- '### Response:\\n' }}\n" +
        "{%- endif %}";
}
