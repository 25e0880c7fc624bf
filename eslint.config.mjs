import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'native/build/**', 'node_modules/**', 'test/guest/**'] },
  ...tseslint.configs.recommended,
  {
    // bin/ and bench/ are plain CommonJS entry points.
    files: ['bin/**/*.js', 'bench/**/*.js', 'test/**/*.js'],
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
);
