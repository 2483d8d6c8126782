"""Jinja chat templates written for the tests after the public prompt formats of four model families, so that
tool calls are rendered with the markers and message layout each family's models expect. They are not the
models' own templates, only stand-ins that behave alike where the tests look.

- QWEN25_INSTRUCT: Qwen 2.5 Instruct, the Hermes style (ChatML turns, tools listed in `<tools>`, calls in
  `<tool_call>`, results in `<tool_response>`).
- LLAMA31_INSTRUCT: Llama 3.1 Instruct (header tokens, calls as JSON `{"name", "parameters"}`, results in the
  `ipython` role, one call a message).
- MISTRAL_NEMO_INSTRUCT: Mistral Nemo Instruct (`[AVAILABLE_TOOLS]`, `[TOOL_CALLS]`, `[TOOL_RESULTS]`, call
  ids of 9 letters or digits, alternating roles).
- GEMMA3_IT: Gemma 3 IT, no tools at all, and user and model turns that must alternate.
"""

QWEN25_INSTRUCT = r"""
{#- The system turn always opens the chat; the tools, when given, are described at its end. -#}
{{- '<|im_start|>system\n' }}
{%- if messages and messages[0].role == 'system' %}
    {{- messages[0].content }}
{%- else %}
    {{- 'You are a helpful assistant.' }}
{%- endif %}
{%- if tools %}
    {{- '\n\n# Tools\n\nYou can call the functions below when they help with the request. Each one is' }}
    {{- ' described by a JSON signature on a line of its own, within <tools></tools> tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' ~ tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nTo call a function, write its name and a JSON object of its arguments within' }}
    {{- ' <tool_call></tool_call> tags, one call per pair of tags:\n<tool_call>\n' }}
    {{- '{"name": "<function name>", "arguments": {<argument values>}}\n</tool_call>' }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for message in messages %}
    {%- if loop.first and message.role == 'system' %}
        {#- Written above. -#}
    {%- elif message.role == 'tool' %}
        {#- A run of tool results is one user turn. -#}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' ~ message.content ~ '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' ~ message.content }}
        {%- endif %}
        {%- for call in message.tool_calls %}
            {%- set fn = call.function if call.function is defined else call %}
            {{- '\n<tool_call>\n' ~ {'name': fn.name, 'arguments': fn.arguments} | tojson }}
            {{- '\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' ~ message.role ~ '\n' ~ (message.content or '') ~ '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

LLAMA31_INSTRUCT = r"""
{%- set today = date_string if date_string is defined else '1 Jan 2025' %}
{%- set tools_in_user = tools_in_user_message if tools_in_user_message is defined else true %}
{%- set ipython_mode = builtin_tools is defined %}
{%- set how_to_call = 'You have access to the functions below. When one of them helps to answer, reply with'
    ~ ' nothing but a JSON object that calls it, of the form {"name": <function name>, "parameters":'
    ~ ' <object of argument values>}, and no other text.\n\n' %}
{%- if messages and messages[0].role == 'system' %}
    {%- set system_text = messages[0].content | trim %}
    {%- set chat = messages[1:] %}
{%- else %}
    {%- set system_text = '' %}
    {%- set chat = messages %}
{%- endif %}
{{- bos_token }}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{%- if tools or ipython_mode %}
    {{- 'Environment: ipython\n' }}
{%- endif %}
{%- if ipython_mode %}
    {{- 'Tools: ' ~ builtin_tools | reject('equalto', 'code_interpreter') | join(', ') ~ '\n\n' }}
{%- endif %}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' ~ today ~ '\n\n' }}
{%- if tools and not tools_in_user %}
    {{- how_to_call }}
    {%- for tool in tools %}
        {{- tool | tojson(indent=4) ~ '\n\n' }}
    {%- endfor %}
{%- endif %}
{{- system_text ~ '<|eot_id|>' }}
{%- set state = namespace(tools_shown=not (tools and tools_in_user)) %}
{%- for message in chat %}
    {%- if message.role in ['ipython', 'tool'] %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' }}
        {%- if message.content is mapping
            or (message.content is iterable and message.content is not string) %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif message.tool_calls %}
        {%- if message.tool_calls | length != 1 %}
            {{- raise_exception('Llama 3.1 takes one tool call per assistant message') }}
        {%- endif %}
        {%- set call = message.tool_calls[0] %}
        {%- set fn = call.function if call.function is defined else call %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- if ipython_mode and fn.name in builtin_tools %}
            {{- '<|python_tag|>' ~ fn.name ~ '.call(' }}
            {%- for key, value in fn.arguments.items() %}
                {{- key ~ '="' ~ value ~ '"' ~ ('' if loop.last else ', ') }}
            {%- endfor %}
            {{- ')' }}
        {%- else %}
            {{- {'name': fn.name, 'parameters': fn.arguments} | tojson }}
        {%- endif %}
        {#- In the ipython environment a call ends the message, not the turn. -#}
        {{- '<|eom_id|>' if ipython_mode else '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' ~ message.role ~ '<|end_header_id|>\n\n' }}
        {%- if message.role == 'user' and not state.tools_shown %}
            {{- how_to_call }}
            {%- for tool in tools %}
                {{- tool | tojson(indent=4) ~ '\n\n' }}
            {%- endfor %}
            {%- set state.tools_shown = true %}
        {%- endif %}
        {{- (message.content or '') | trim ~ '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if not state.tools_shown %}
    {{- raise_exception('The tools go into the first user message, and there is none') }}
{%- endif %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

MISTRAL_NEMO_INSTRUCT = r"""
{%- set digits_and_letters = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ' %}
{%- if messages and messages[0].role == 'system' %}
    {%- set system_text = messages[0].content %}
    {%- set chat = messages[1:] %}
{%- else %}
    {%- set system_text = '' %}
    {%- set chat = messages %}
{%- endif %}
{#- Tool calls and their results aside, user and assistant must take turns, the user first. The last user
    message carries the tool list and the system prompt. -#}
{%- set state = namespace(next_role='user', last_user=-1) %}
{%- for message in chat %}
    {%- if message.role == 'user' %}
        {%- set state.last_user = loop.index0 %}
    {%- endif %}
    {%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
        {%- if message.role != state.next_role %}
            {{- raise_exception('Mistral needs user and assistant messages to alternate, beginning with the'
                ~ ' user (tool calls and tool results aside)') }}
        {%- endif %}
        {%- set state.next_role = 'assistant' if message.role == 'user' else 'user' %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in chat %}
    {%- set ids = [] %}
    {%- if message.role == 'assistant' and message.tool_calls %}
        {%- set ids = message.tool_calls | map(attribute='id') | list %}
    {%- elif message.role == 'tool' %}
        {%- set ids = [message.tool_call_id] %}
    {%- endif %}
    {%- for id in ids %}
        {%- if id is not string or id | length != 9 or id | reject('in', digits_and_letters) | list %}
            {{- raise_exception('Mistral tool call ids must be exactly 9 letters or digits, got ' ~ id) }}
        {%- endif %}
    {%- endfor %}
    {%- if message.role == 'user' %}
        {%- if loop.index0 == state.last_user %}
            {%- if tools %}
                {{- '[AVAILABLE_TOOLS]' ~ tools | tojson ~ '[/AVAILABLE_TOOLS]' }}
            {%- endif %}
            {%- if system_text %}
                {{- '[INST]' ~ system_text ~ '\n\n' ~ message.content ~ '[/INST]' }}
            {%- else %}
                {{- '[INST]' ~ message.content ~ '[/INST]' }}
            {%- endif %}
        {%- else %}
            {{- '[INST]' ~ message.content ~ '[/INST]' }}
        {%- endif %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '[TOOL_CALLS][' }}
        {%- for call in message.tool_calls %}
            {%- set fn = call.function if call.function is defined else call %}
            {{- {'name': fn.name, 'arguments': fn.arguments, 'id': call.id} | tojson }}
            {{- '' if loop.last else ', ' }}
        {%- endfor %}
        {{- ']' ~ eos_token }}
    {%- elif message.role == 'assistant' %}
        {{- message.content ~ eos_token }}
    {%- elif message.role == 'tool' %}
        {{- '[TOOL_RESULTS]{"content": ' ~ message.content | string }}
        {{- ', "call_id": "' ~ message.tool_call_id ~ '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception('Mistral takes user, assistant and tool messages after the system message, not '
            ~ message.role) }}
    {%- endif %}
{%- endfor %}
"""

GEMMA3_IT = r"""
{#- Gemma has no system role: a system message opens the first user turn. -#}
{%- if messages and messages[0].role == 'system' %}
    {%- set preamble = messages[0].content ~ '\n\n' %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set preamble = '' %}
    {%- set turns = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in turns %}
    {%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' %}
    {%- if message.role != expected %}
        {{- raise_exception('Gemma 3 needs user and assistant turns to alternate, beginning with the user') }}
    {%- endif %}
    {{- '<start_of_turn>' ~ ('model' if message.role == 'assistant' else 'user') ~ '\n' }}
    {{- preamble if loop.first else '' }}
    {%- if message.content is string %}
        {{- message.content | trim }}
    {%- else %}
        {%- for part in message.content %}
            {%- if part.type == 'image' %}
                {{- '<start_of_image>' }}
            {%- elif part.type == 'text' %}
                {{- part.text | trim }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
"""
