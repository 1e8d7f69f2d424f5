/**
 * Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template`,
 * tokenizer_config.json `chat_template`) rendered for a list of messages with @huggingface/jinja,
 * the implementation Hugging Face's JS libraries use, with the variables transformers passes
 * (`messages`, `bos_token`, `eos_token`, `add_generation_prompt`).
 */
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplateOptions {
  /** End with the header of the assistant's turn, so the model answers (default true). */
  addGenerationPrompt?: boolean;
  /** More variables for the template. */
  variables?: Record<string, unknown>;
}

type Template = { render(vars: Record<string, unknown>): string };
let ctor: (new (source: string) => Template) | undefined;
const compiled = new Map<string, Template>();

/** Checks a list of chat messages ({role, content} strings); TypeError naming the bad one. */
export function checkMessages(messages: unknown, name = 'messages'): ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) throw typeError(`${name} must be a non-empty array of {role, content}, got ${describe(messages)}`);
  messages.forEach((m, i) => {
    if (m === null || typeof m !== 'object' || typeof (m as ChatMessage).role !== 'string' || typeof (m as ChatMessage).content !== 'string')
      throw typeError(`${name}[${i}] must be {role: string, content: string}, got ${describe(m)}`);
  });
  return messages as ChatMessage[];
}

/** Renders `template` for `messages`; MoeError ERR_TOKENIZER when the template does not parse or fails. */
export function renderChatTemplate(template: string, messages: readonly ChatMessage[], options?: ChatTemplateOptions & { bosToken?: string; eosToken?: string }): string {
  if (typeof template !== 'string') throw typeError(`template must be a string, got ${describe(template)}`);
  const msgs = checkMessages(messages);
  const o = checkOptions(options);
  let t = compiled.get(template);
  if (!t) {
    ctor ??= (require('@huggingface/jinja') as { Template: new (source: string) => Template }).Template;
    try {
      t = new ctor(template);
    } catch (e) {
      throw new MoeError(`the chat template does not parse (${(e as Error).message})`, 'ERR_TOKENIZER');
    }
    if (compiled.size > 16) compiled.clear();
    compiled.set(template, t);
  }
  const vars = checkOptions(o.variables, 'options.variables');
  try {
    return t.render({
      ...vars,
      messages: msgs.map((m) => ({ ...m })),
      bos_token: o.bosToken ?? '',
      eos_token: o.eosToken ?? '',
      add_generation_prompt: o.addGenerationPrompt !== false,
    });
  } catch (e) {
    throw new MoeError(`the chat template failed (${(e as Error).message})`, 'ERR_TOKENIZER');
  }
}
